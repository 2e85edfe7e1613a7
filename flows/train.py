"""The `train` flow: prepare -> fit -> evaluate, every step cached by content."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.prepare import prepare_stages, prepare_summary, run_stage_task
from rnnlib.config import TrainFlowConfig
from tasks.train import evaluate_task, fit_task


@flow(name="train")
def train_flow(config: TrainFlowConfig = TrainFlowConfig()) -> dict[str, Any]:
    """Prepare the data, train a model, evaluate it on the test split and write its bundle."""
    stages: dict[str, dict[str, Any]] = {}
    outputs = prepare_stages(config, stages)
    tensors = outputs["tensorize"]
    fitted = run_stage_task(fit_task, stages, tensors=tensors, model=config.model, cfg=config.train,
                            work_dir=config.work_dir)
    evaluated = run_stage_task(
        evaluate_task, stages, tensors=tensors, vocab=outputs["vocab"], fitted=fitted,
        preprocess=config.preprocess, model=config.model, max_length=config.tensorize.max_length,
        work_dir=config.work_dir,
    )
    result = evaluated.manifest
    get_run_logger().info("test accuracy %.4f, macro F1 %.4f; bundle in %s", result["accuracy"],
                          result["macro"]["f1-score"], result["bundle"])
    return {**prepare_summary(outputs, stages), "evaluation": result,
            "best_epoch": fitted.manifest["best_epoch"], "history": fitted.manifest["history"]}
