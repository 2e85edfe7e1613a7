"""Training runs and promoted models logged to MLflow (optional: `pip install "rnnlib[tracking]"`).

A run records the configuration as parameters, every epoch's losses, accuracies and learning
rate, the test metrics beside the baseline's, the data's stage keys as tags and the whole bundle
(model card included) as artifacts. A model promoted in the registry becomes a version of an
MLflow registered model whose source is that run's bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rnnlib.config import TrackingConfig, TrainFlowConfig
from rnnlib.modeling.pipeline import TrainedModel

NOT_LOGGED = {"dask", "work_dir", "tracking", "tune"}  # where and how it ran, not what it is


def _flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)[:500]  # MLflow's limit on a parameter's value
    return flat


def _experiment(mlflow: Any, cfg: TrackingConfig) -> str:
    """The experiment's id; a new one keeps its artifacts beside a local SQLite database."""
    found = mlflow.get_experiment_by_name(cfg.experiment)
    if found is not None:
        return found.experiment_id
    location = cfg.artifacts
    if location is None and cfg.uri.startswith("sqlite:///"):
        location = (Path(cfg.uri.removeprefix("sqlite:///")).resolve().parent / "mlflow-artifacts").as_uri()
    return mlflow.create_experiment(cfg.experiment, artifact_location=location)


def log_training(trained: TrainedModel, config: TrainFlowConfig) -> str:
    """Log a training run; returns its MLflow run id."""
    import mlflow

    cfg = config.tracking
    mlflow.set_tracking_uri(cfg.uri)
    result = trained.evaluation
    with mlflow.start_run(experiment_id=_experiment(mlflow, cfg), run_name=f"bundle {result.version[:12]}") as run:
        mlflow.log_params(_flatten(config.model_dump(mode="json", exclude=NOT_LOGGED)))
        for record in trained.history:
            mlflow.log_metrics(
                {k: float(v) for k, v in record.items() if k not in ("epoch", "seconds")}, step=record["epoch"]
            )
        metrics = {f"test_{name.replace(' ', '_')}": model for name, model, _ in result.comparison()}
        metrics.update(
            {f"baseline_{name.replace(' ', '_')}": base for name, _, base in result.comparison() if base is not None}
        )
        mlflow.log_metrics({**metrics, "best_epoch": trained.best_epoch})
        mlflow.set_tags(
            {
                "bundle_version": result.version,
                "test_rows": result.rows,
                **{f"data.{s.stage}": s.key for s in trained.data.stages},
            }
        )
        mlflow.log_artifacts(result.bundle, artifact_path="bundle")
        return run.info.run_id


def register_model(cfg: TrackingConfig, run_id: str, bundle_version: str) -> str:
    """Make the run's bundle a new version of the registered model `cfg.model_name`; returns the
    version number."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(cfg.uri)
    try:
        client.create_registered_model(cfg.model_name)
    except MlflowException:  # already registered
        pass
    source = f"{client.get_run(run_id).info.artifact_uri}/bundle"
    version = client.create_model_version(
        cfg.model_name, source=source, run_id=run_id, tags={"bundle_version": bundle_version}
    )
    return str(version.version)
