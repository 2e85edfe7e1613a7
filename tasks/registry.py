"""Prefect task around the model registry: promote a trained bundle only if it is no worse."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from rnnlib import registry
from tasks.retries import IO_RETRIES


@task(name="promote", cache_policy=NONE, **IO_RETRIES)
def promote_task(registry_dir: str, bundle: str, ingest_dir: str, split_dir: str) -> dict[str, Any]:
    """Compare the candidate with the current model on the same test rows; replace it or not."""
    return registry.promote(registry_dir, bundle, ingest_dir, split_dir)
