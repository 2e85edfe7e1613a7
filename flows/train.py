"""The `train` flow: prepare -> [word vectors] -> [language model] -> fit, beside it [wide] and
baseline -> evaluate, every stage a task cached by content; the order is the library's
(`rnnlib.modeling.pipeline.train_on`)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from rnnlib.config import TrainFlowConfig
from rnnlib.modeling.pipeline import TrainedModel, train_on
from rnnlib.stages import holding_outputs
from rnnlib_flows.prepare import prepare_as_tasks
from rnnlib_flows.reports import publish_training
from rnnlib_tasks.train import TRAIN_TASKS, track_task


@flow(name="train")
def train_flow(config: TrainFlowConfig = TrainFlowConfig()) -> TrainedModel:
    """Prepare the data, train a model, evaluate it on the test split and write its bundle."""
    with holding_outputs():  # until the run ends, `prune` leaves what it made or reused
        trained = train_on(prepare_as_tasks(config), config, runner=TRAIN_TASKS)
        if config.tracking.uri:
            trained = trained.model_copy(update={"tracking_run": track_task(trained, config)})
        result = trained.evaluation
        get_run_logger().info(
            "test accuracy %.4f, macro F1 %.4f; bundle in %s", result.accuracy, result.macro.f1, result.bundle
        )
        publish_training(trained)
        return trained
