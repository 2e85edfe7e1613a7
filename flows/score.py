"""The `score` flow: a model bundle applied to dumps of new text, partition by partition."""

from __future__ import annotations

import sys
import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm import tqdm

from rnnlib.config import InputSpec, ScoreConfig
from rnnlib.errors import InputError
from rnnlib.score_run import (
    MANIFEST, ScoreRun, account, input_name, open_output, output_dir_for, output_lock,
    pending_partitions, throughput,
)
from rnnlib.storage import read_json
from tasks.dask_clients import close_clients
from tasks.score import plan_task, score_partition_task, stage_task


class ScoringFailed(RuntimeError):
    """Some inputs or partitions failed; the others finished and are in the output."""


@flow(name="score", task_runner=ThreadPoolTaskRunner(max_workers=64))  # threads only wait on Dask
def score_flow(config: ScoreConfig) -> dict[str, Any]:
    """Score every row of the inputs (or reject it with a reason); resumable and idempotent.
    `config.bundle` may be a model registry folder: its current model is used."""
    log = get_run_logger()
    run = plan_task(config)
    with output_lock(run.out):  # one run at a time per output directory
        status = open_output(run, config.overwrite)
        if status == "complete":
            manifest = read_json(run.out / MANIFEST)
            log.info("already complete: %s rows in %s were scored by this bundle with these options; "
                     "nothing to do (overwrite to redo)", manifest["rows"], run.out)
            return {**manifest, "already_complete": True}
        if status == "resume":
            log.info("resuming the unfinished run in %s", run.out)
        try:
            manifest = _score(run, config)
        finally:
            close_clients()
    create_markdown_artifact(key="scoring-summary", markdown=_markdown(manifest),
                             description="rows scored and rejected by the score flow")
    if manifest["failed"]:
        raise ScoringFailed(f"{len(manifest['failed'])} failed (the rest is written to {run.out}): "
                            + "; ".join(v if v.startswith(k) else f"{k}: {v}"
                                        for k, v in manifest["failed"].items()))
    log.info("scored %s rows, rejected %s, in %.1f s (%.0f rows/s); output in %s", manifest["scored"],
             manifest["rejected"] or "none", manifest["seconds"], manifest["rows_per_second"], run.out)
    return {**manifest, "already_complete": False}


@flow(name="score-new-file")
def score_new_file_flow(path: str, registry: str = "models", output_root: str = "scored",
                        text_column: str = "text", id_column: str | None = None,
                        format: str = "auto") -> dict[str, Any]:
    """Score one newly arrived file with the registry's current model into its own folder under
    `output_root` (named after the file and a digest of its path, so runs for different files
    never share an output). What the file-arrival trigger runs."""
    config = ScoreConfig(
        bundle=registry, output=str(output_dir_for(path, output_root)),
        inputs=[InputSpec(path=path, format=format, text_columns=[text_column], id_column=id_column)],
    )
    return score_flow(config)


def _score(run: ScoreRun, config: ScoreConfig) -> dict[str, Any]:
    start = time.perf_counter()
    failed: dict[str, str] = {}
    staged: list[dict[str, Any]] = []
    reading = {stage_task.submit(input_name(u), u, i, run, config.dask): u for i, u in enumerate(run.units)}
    scoring: dict[PrefectFuture, str] = {}
    bar = tqdm(total=0, unit="partition", desc="scoring", disable=not sys.stderr.isatty())
    progress = create_progress_artifact(0.0, key="scoring-progress", description="partitions scored")
    for future in as_completed(list(reading)):
        try:
            unit = future.result()
        except Exception as exc:  # noqa: BLE001 - a bad input is reported, the others go on
            failed[input_name(reading[future])] = _reason(exc)
            continue
        staged.append(unit)
        for part in pending_partitions(run, [unit]):
            scoring[score_partition_task.submit(part, run, config.dask)] = part.name
        bar.total = len(scoring)
        bar.refresh()
    stats, done = [], 0
    for future in as_completed(list(scoring)):
        try:
            stats.append(future.result())
        except Exception as exc:  # noqa: BLE001 - a bad partition is reported, the others go on
            failed[scoring[future]] = _reason(exc)
        done += 1
        bar.update(1)
        update_progress_artifact(progress, 100.0 * done / max(len(scoring), 1))
    bar.close()
    return account(run, sorted(staged, key=lambda u: u["dir"]), failed,
                   throughput(stats, time.perf_counter() - start))


def _reason(exc: BaseException) -> str:
    """Bad input says what and where itself; anything else also says what kind of error."""
    return str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"


def _markdown(manifest: dict[str, Any]) -> str:
    lines = ["# scoring", "", f"**rows** {manifest['rows']}: **scored** {manifest['scored']}, "
             f"rejected {sum(manifest['rejected'].values())}, truncated {manifest['truncated']}; "
             f"{manifest['rows_per_second']:.0f} rows/s, {manifest['mb_per_second']} MB/s", "",
             "| label | rows |", "|---|---|"]
    lines += [f"| {label} | {n} |" for label, n in manifest["labels"].items()]
    if manifest["rejected"]:
        lines += ["", "| rejected because | rows |", "|---|---|"]
        lines += [f"| {reason} | {n} |" for reason, n in manifest["rejected"].items()]
    if manifest["failed"]:
        lines += ["", "| failed | error |", "|---|---|"]
        lines += [f"| {name} | {error} |" for name, error in manifest["failed"].items()]
    return "\n".join(lines)
