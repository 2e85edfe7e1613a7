"""Prefect tasks of the `train` flow: fit (cached, resumable) and evaluate (metrics, plots, bundle)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from rnnlib import evaluate, train
from rnnlib.bundle import METRICS, load_bundle, save_bundle
from rnnlib.config import ModelConfig, PreprocessConfig, TrainConfig
from rnnlib.data import ShardBatches
from rnnlib.storage import MANIFEST, write_json
from tasks.caching import STAGE_TASK, StageOutput, run_stage

logging.getLogger("rnnlib").setLevel(logging.INFO)  # per-epoch progress into the Prefect logs


@task(name="fit", **STAGE_TASK)
def fit_task(tensors: StageOutput, model: ModelConfig, cfg: TrainConfig, work_dir: str) -> StageOutput:
    """Train; checkpoints live in `<key>.partial/` until training ends, so a killed run that is
    started again resumes from its last epoch."""
    params = dict(locals())

    def build(out: Path) -> dict[str, Any]:
        partial = out.with_name(out.name + ".partial")
        summary = train.train(tensors.path, partial, model, cfg)
        write_json(partial / MANIFEST, summary)
        if out.exists():
            shutil.rmtree(out)
        os.replace(partial, out)
        return summary

    return run_stage("fit", params, build)


@task(name="evaluate", **STAGE_TASK)
def evaluate_task(tensors: StageOutput, vocab: StageOutput, fitted: StageOutput,
                  preprocess: PreprocessConfig, model: ModelConfig, max_length: int | None,
                  work_dir: str) -> StageOutput:
    """Score the test split with the best weights; write metrics, plots and the model bundle."""
    params = dict(locals())

    def build(out: Path) -> dict[str, Any]:
        out.mkdir(parents=True, exist_ok=True)
        bundle_dir = out / "bundle"
        data = {"tensors": tensors.key, "vocab": vocab.key, "fit": fitted.key}
        save_bundle(bundle_dir, Path(fitted.path) / train.BEST, Path(vocab.path), preprocess, model,
                    max_length, data)
        bundle = load_bundle(bundle_dir)  # evaluate exactly what users will load
        test = ShardBatches(Path(tensors.path) / "test", 512, shuffle=False)
        truth, predicted = evaluate.predict(bundle.model, test, torch.device("cpu"))
        result = evaluate.metrics(truth, predicted, list(bundle.labels.labels))
        result["history"] = fitted.manifest["history"]
        write_json(bundle_dir / METRICS, result)
        evaluate.plot_confusion(result, bundle_dir / "confusion.png")
        evaluate.plot_curves(fitted.manifest["history"], bundle_dir / "curves.png")
        summary = {"bundle": str(bundle_dir), "version": bundle.version,
                   **{k: result[k] for k in ("rows", "accuracy", "macro", "weighted")}}
        write_json(out / MANIFEST, summary)
        return summary

    output = run_stage("evaluate", params, build)
    _artifacts(output.manifest)
    return output


def _artifacts(summary: dict[str, Any]) -> None:
    create_table_artifact(
        key="evaluation-metrics",
        table=[{"metric": name, "value": round(value, 4)} for name, value in (
            ("accuracy", summary["accuracy"]), ("macro F1", summary["macro"]["f1-score"]),
            ("macro recall", summary["macro"]["recall"]), ("weighted F1", summary["weighted"]["f1-score"]))],
        description="test-split metrics",
    )
    create_markdown_artifact(
        key="evaluation-summary",
        markdown=(f"# evaluation\n\n{summary['rows']} test rows: accuracy **{summary['accuracy']:.4f}**, "
                  f"macro F1 {summary['macro']['f1-score']:.4f}, macro recall {summary['macro']['recall']:.4f}."
                  f"\n\nBundle `{summary['bundle']}` (version {summary['version']})."),
        description="test-split summary",
    )
