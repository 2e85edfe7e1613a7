"""Prefect tasks of the modelling stages: each is one library stage with retries (the fit
resumes from its checkpoints), named by what it does."""

from __future__ import annotations

import logging

from prefect import task

from rnnlib import tracking
from rnnlib.config import TrainFlowConfig
from rnnlib.modeling import pipeline
from rnnlib.modeling.pipeline import TrainedModel
from rnnlib_tasks.options import TASK_OPTIONS
from rnnlib_tasks.prepare import PREPARE_TASKS
from rnnlib_tasks.runner import PrefectTasks

logging.getLogger("rnnlib").setLevel(logging.INFO)  # per-epoch progress into the Prefect logs

vectors_task = task(name="vectors", task_run_name="vectors {dim}d", **TASK_OPTIONS)(pipeline.vectors_stage)
language_model_task = task(
    name="language_model",
    task_run_name="language model {model.cell} {model.num_layers}x{model.hidden_size}",
    **TASK_OPTIONS,
)(pipeline.language_model_stage)
NETWORK = "{model.cell} {model.num_layers}x{model.hidden_size} seed {cfg.seed}"
fit_task = task(name="fit", task_run_name=f"fit {NETWORK}", **TASK_OPTIONS)(pipeline.fit_stage)
refit_task = task(name="refit", task_run_name=f"refit {NETWORK}", **TASK_OPTIONS)(pipeline.refit_stage)
wide_task = task(name="wide", task_run_name="wide tf-idf", **TASK_OPTIONS)(pipeline.wide_stage)
baseline_task = task(name="baseline", task_run_name="baseline tf-idf {level}", **TASK_OPTIONS)(pipeline.baseline_stage)
evaluate_task = task(name="evaluate", task_run_name="evaluate", **TASK_OPTIONS)(pipeline.evaluate_stage)

MODELLING_TASKS = [vectors_task, language_model_task, fit_task, refit_task, wide_task, baseline_task, evaluate_task]
TRAIN_TASKS = PrefectTasks([*PREPARE_TASKS.tasks.values(), *MODELLING_TASKS])


@task(name="track", task_run_name="track in MLflow", **TASK_OPTIONS)
def track_task(trained: TrainedModel, config: TrainFlowConfig) -> str:
    """Log the run to MLflow; returns its run id."""
    return tracking.log_training(trained, config)
