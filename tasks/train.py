"""Prefect tasks of the `train` flow: fitting (resumable) and evaluation, cached by content."""

from __future__ import annotations

import logging

from prefect import task
from rnnlib_tasks.options import TASK_OPTIONS

from rnnlib.config import ModelConfig, PreprocessConfig, TrainConfig
from rnnlib.modeling import pipeline
from rnnlib.stages import StageOutput

logging.getLogger("rnnlib").setLevel(logging.INFO)  # per-epoch progress into the Prefect logs


@task(name="fit", **TASK_OPTIONS)
def fit_task(tensors: StageOutput, model: ModelConfig, cfg: TrainConfig, work_dir: str) -> StageOutput:
    return pipeline.fit_stage(tensors, model=model, cfg=cfg, work_dir=work_dir)


@task(name="evaluate", **TASK_OPTIONS)
def evaluate_task(tensors: StageOutput, vocab: StageOutput, fitted: StageOutput,
                  preprocess: PreprocessConfig, model: ModelConfig, max_length: int | None,
                  work_dir: str) -> StageOutput:
    return pipeline.evaluate_stage(tensors, vocab, fitted, preprocess=preprocess, model=model,
                                   max_length=max_length, work_dir=work_dir)
