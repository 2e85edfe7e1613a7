"""The `retrain` flow: train on the latest data, then promote the model to the registry only if
it evaluates at least as well as the current one (which scoring keeps using otherwise)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from rnnlib.config import TrainFlowConfig, load_config
from rnnlib.scoring.registry import Decision
from rnnlib.stages import holding_outputs
from rnnlib_flows.reports import publish_decision
from rnnlib_flows.train import train_flow
from rnnlib_tasks.registry import promote_task, register_task


@flow(name="retrain")
def retrain_flow(
    dataset: str | None = None,
    config_file: str | None = None,
    registry: str = "models",
    overrides: list[str] | None = None,
) -> Decision:
    """dataset: a registered dataset (else the config file's source); config_file: a YAML recipe;
    registry: the model registry folder; overrides: `key=value` settings, as `--set` takes."""
    with holding_outputs():  # until the run ends, `prune` leaves what it made or reused
        values = {"source.dataset": dataset} if dataset else None
        config = load_config(TrainFlowConfig, config_file, overrides or [], values)
        trained = train_flow(config)
        decision = promote_task(registry, trained.evaluation.bundle, trained.data.ingest.path, trained.data.split.path)
        if decision.promoted and trained.tracking_run:
            register_task(config.tracking, trained.tracking_run, decision.candidate)
        get_run_logger().info("%s: %s", "promoted" if decision.promoted else "kept the current model", decision.reason)
        publish_decision(decision)
        return decision
