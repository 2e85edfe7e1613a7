"""Prefect task of the `tune` flow: the search, one library call. Its trials are fit stages,
cached by content; the study is kept in its own database, so a retried or rerun task resumes it."""

from __future__ import annotations

from prefect import task

from rnnlib.config import TrainFlowConfig
from rnnlib.modeling import tune
from rnnlib.prepare.pipeline import PreparedData
from rnnlib.stages import StageOutput
from rnnlib_tasks.dask_clients import close_clients, get_client
from rnnlib_tasks.options import TASK_OPTIONS


@task(name="search", task_run_name="search", **TASK_OPTIONS)
def search_task(config: TrainFlowConfig, data: PreparedData, vectors: StageOutput | None) -> tune.Search:
    try:
        return tune.tune(config, data, vectors, get_client(config.dask) if config.tune.parallel > 1 else None)
    finally:
        close_clients()
