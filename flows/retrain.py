"""The `retrain` flow: train on the latest data, then promote the model to the registry only if
it evaluates at least as well as the current one (which scoring keeps using otherwise)."""

from __future__ import annotations

import json
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.train import train_flow
from rnnlib.config import TrainFlowConfig, load_config
from tasks.registry import promote_task


@flow(name="retrain")
def retrain_flow(dataset: str | None = None, config_file: str | None = None, registry: str = "models",
                 overrides: list[str] | None = None) -> dict[str, Any]:
    """dataset: a registered dataset (else the config file's source); config_file: a YAML recipe;
    registry: the model registry folder; overrides: `key=value` settings, as `--set` takes."""
    extra = [f"source.dataset={json.dumps(dataset)}"] if dataset else []
    config = load_config(TrainFlowConfig, config_file, [*(overrides or []), *extra])
    trained = train_flow(config)
    decision = promote_task(registry, trained["evaluation"]["bundle"], trained["stages"]["ingest"]["path"],
                            trained["stages"]["split"]["path"])
    get_run_logger().info("%s: %s", "promoted" if decision["promoted"] else "kept the current model",
                          decision["reason"])
    create_markdown_artifact(key="retrain-decision", description="promotion decision", markdown=(
        f"# retrain\n\nCandidate `{decision['candidate']}`: **{'promoted' if decision['promoted'] else 'not promoted'}**"
        f" — {decision['reason']}."))
    return {**decision, "bundle": trained["evaluation"]["bundle"]}
