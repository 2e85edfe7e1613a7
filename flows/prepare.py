"""The `prepare` flow: ingest -> preprocess -> split -> vocab -> tensorize, each step cached."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import State

from rnnlib.config import PrepareConfig
from rnnlib.split import UNLABELLED_SPLIT
from tasks.caching import StageOutput
from tasks.dask_clients import close_clients
from tasks.prepare import (
    fetch_task, ingest_task, preprocess_task, split_task, tensorize_task, vocab_task,
)


class AccountingError(RuntimeError):
    """Rows went missing between ingest and tensorize: a bug, never expected."""


def run_stage_task(task: Any, timings: dict[str, dict[str, Any]], **kwargs: Any) -> StageOutput:
    """Run a stage task and note whether it came from cache and how long it took."""
    start = time.perf_counter()
    state: State = task(**kwargs, return_state=True)
    output: StageOutput = state.result()
    timings[output.stage] = {
        "cached": state.name == "Cached",
        "seconds": round(time.perf_counter() - start, 3),
        "path": output.path,
    }
    return output


def prepare_stages(config: PrepareConfig, stages: dict[str, dict[str, Any]]) -> dict[str, StageOutput]:
    """The prepare tasks in order (shared by the prepare and train flows). The Dask cluster they
    start on first use is shut down when they are done, whatever happens."""
    try:
        return _prepare_stages(config, stages)
    finally:
        close_clients()


def _prepare_stages(config: PrepareConfig, stages: dict[str, dict[str, Any]]) -> dict[str, StageOutput]:
    work, dask = config.work_dir, config.dask
    source = fetch_task(config.source)
    ingested = run_stage_task(ingest_task, stages, source=source, dask=dask, work_dir=work)
    labelled = ingested.manifest["labelled"]
    pre = run_stage_task(preprocess_task, stages, ingested=ingested, cfg=config.preprocess,
                         dask=dask, work_dir=work)
    splitted = run_stage_task(split_task, stages, preprocessed=pre, labelled=labelled,
                              cfg=config.split, dask=dask, work_dir=work)
    fitted = run_stage_task(vocab_task, stages, preprocessed=pre, splitted=splitted,
                            fit_split="train" if labelled else UNLABELLED_SPLIT, cfg=config.vocab,
                            dask=dask, work_dir=work)
    tensors = run_stage_task(tensorize_task, stages, preprocessed=pre, splitted=splitted,
                             fitted=fitted, labelled=labelled, cfg=config.tensorize, dask=dask,
                             work_dir=work)
    if tensors.manifest["rows"] != ingested.manifest["rows"]:
        raise AccountingError(
            f"{ingested.manifest['rows']} rows ingested, {tensors.manifest['rows']} accounted")
    return {"ingest": ingested, "vocab": fitted, "tensorize": tensors}


def prepare_summary(outputs: dict[str, StageOutput], stages: dict[str, Any]) -> dict[str, Any]:
    final = outputs["tensorize"].manifest
    return {
        "stages": stages,
        "rows": final["rows"],
        "kept": final["kept"],
        "rejected": final["rejected"],
        "splits": final["splits"],
        "vocab_size": final["vocab_size"],
        "labels": final["labels"],
        "tensors": outputs["tensorize"].path,
        "vocab": outputs["vocab"].path,
    }


@flow(name="prepare")
def prepare_flow(config: PrepareConfig = PrepareConfig()) -> dict[str, Any]:
    """Turn labelled text into tensor shards; returns where everything is and what was kept."""
    stages: dict[str, dict[str, Any]] = {}
    summary = prepare_summary(prepare_stages(config, stages), stages)
    get_run_logger().info(
        "prepared %s rows: kept %s %s, rejected %s; shards in %s",
        summary["rows"], summary["kept"], summary["splits"], summary["rejected"] or "none",
        summary["tensors"],
    )
    create_markdown_artifact(key="prepare-summary", markdown=_markdown(summary),
                             description="rows kept and rejected by the prepare flow")
    return summary


def _markdown(summary: dict[str, Any]) -> str:
    lines = ["# prepare", "", "| stage | cached | seconds |", "|---|---|---|"]
    lines += [f"| {name} | {s['cached']} | {s['seconds']} |" for name, s in summary["stages"].items()]
    lines += ["", f"**rows** {summary['rows']}, **kept** {summary['kept']}", "",
              "| split | rows |", "|---|---|"]
    lines += [f"| {name} | {n} |" for name, n in summary["splits"].items()]
    if summary["rejected"]:
        lines += ["", "| rejected because | rows |", "|---|---|"]
        lines += [f"| {reason} | {n} |" for reason, n in summary["rejected"].items()]
    return "\n".join(lines)
