"""Prefect task around the model registry: promote a trained bundle only if it is no worse."""

from __future__ import annotations

from prefect import task

from rnnlib import tracking
from rnnlib.config import TrackingConfig
from rnnlib.scoring import registry
from rnnlib_tasks.options import TASK_OPTIONS


@task(name="register", task_run_name="register in MLflow", **TASK_OPTIONS)
def register_task(cfg: TrackingConfig, run_id: str, bundle_version: str) -> str:
    """The promoted bundle as a new version of the MLflow registered model."""
    return tracking.register_model(cfg, run_id, bundle_version)


@task(name="promote", task_run_name="promote", **TASK_OPTIONS)
def promote_task(registry_dir: str, bundle: str, ingest_dir: str, split_dir: str) -> registry.Decision:
    """Compare the candidate with the current model on the same test rows; replace it or not."""
    return registry.promote(registry_dir, bundle, ingest_dir, split_dir)
