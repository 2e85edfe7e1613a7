"""Prefect tasks of the `train` flow: fitting (resumable) and evaluation, cached by content."""

from __future__ import annotations

import logging

from prefect import task

from rnnlib import tracking
from rnnlib.config import (
    ModelConfig,
    PreprocessConfig,
    PretrainConfig,
    TrainConfig,
    TrainFlowConfig,
)
from rnnlib.modeling import pipeline
from rnnlib.modeling.pipeline import TrainedModel
from rnnlib.prepare.pipeline import PreparedData
from rnnlib.stages import StageOutput
from rnnlib_tasks.options import TASK_OPTIONS

logging.getLogger("rnnlib").setLevel(logging.INFO)  # per-epoch progress into the Prefect logs


@task(name="fit", task_run_name="fit {model.cell} {model.num_layers}x{model.hidden_size}", **TASK_OPTIONS)
def fit_task(tensors: StageOutput, model: ModelConfig, cfg: TrainConfig, work_dir: str) -> StageOutput:
    return pipeline.fit_stage(tensors, model=model, cfg=cfg, work_dir=work_dir)


@task(name="vectors", task_run_name="vectors {dim}d", **TASK_OPTIONS)
def vectors_task(data: PreparedData, cfg: PretrainConfig, dim: int, seed: int, work_dir: str) -> StageOutput:
    return pipeline.vectors_stage(data, cfg=cfg, dim=dim, seed=seed, work_dir=work_dir)


@task(
    name="language_model",
    task_run_name="language model {model.cell} {model.num_layers}x{model.hidden_size}",
    **TASK_OPTIONS,
)
def language_model_task(
    data: PreparedData,
    model: ModelConfig,
    cfg: PretrainConfig,
    max_length: int | None,
    batch_size: int,
    seed: int,
    device: str,
    work_dir: str,
) -> StageOutput:
    return pipeline.language_model_stage(
        data,
        model=model,
        cfg=cfg,
        max_length=max_length,
        batch_size=batch_size,
        seed=seed,
        device=device,
        work_dir=work_dir,
    )


@task(name="track", task_run_name="track in MLflow", **TASK_OPTIONS)
def track_task(trained: TrainedModel, config: TrainFlowConfig) -> str:
    """Log the run to MLflow; returns its run id."""
    return tracking.log_training(trained, config)


@task(name="baseline", task_run_name="baseline tf-idf {level}", **TASK_OPTIONS)
def baseline_task(data: PreparedData, level: str, work_dir: str) -> StageOutput:
    return pipeline.baseline_stage(data, level=level, work_dir=work_dir)


@task(name="wide", task_run_name="wide tf-idf", **TASK_OPTIONS)
def wide_task(data: PreparedData, buckets: int, seed: int, work_dir: str) -> StageOutput:
    return pipeline.wide_stage(data, buckets=buckets, seed=seed, work_dir=work_dir)


@task(name="evaluate", task_run_name="evaluate", **TASK_OPTIONS)
def evaluate_task(
    data: PreparedData,
    fitted: StageOutput,
    baseline: StageOutput | None,
    preprocess: PreprocessConfig,
    model: ModelConfig,
    max_length: int | None,
    work_dir: str,
    wide: StageOutput | None = None,
    batch_size: int = 64,
) -> StageOutput:
    return pipeline.evaluate_stage(
        data,
        fitted,
        baseline,
        preprocess=preprocess,
        model=model,
        max_length=max_length,
        work_dir=work_dir,
        wide=wide,
        batch_size=batch_size,
    )
