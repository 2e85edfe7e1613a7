"""Prefect tasks of the `score` flow: planning, reading each input, scoring each partition.

The run's state lives in its output directory (see rnnlib.score_run), not in Prefect's cache:
a partition is done when its file exists. Each input and each partition is its own task run, so
a transient I/O fault is retried for that piece only and a bad one does not sink the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from rnnlib import score_run, scoring
from rnnlib.config import DaskConfig, ScoreConfig
from rnnlib.readers import ReadUnit
from tasks.dask_clients import get_client
from tasks.retries import IO_RETRIES

SCORE_TASK = {"cache_policy": NONE, **IO_RETRIES}


@task(name="plan-scoring", **SCORE_TASK)
def plan_task(config: ScoreConfig) -> score_run.ScoreRun:
    """Resolve the inputs (fingerprinting every file) and the bundle."""
    return score_run.plan_run(config)


@task(name="read-input", task_run_name="read {name}", **SCORE_TASK)
def stage_task(name: str, unit: ReadUnit, index: int, run: score_run.ScoreRun,
               dask: DaskConfig) -> dict[str, Any]:
    """Read one input into canonical partitions, on a Dask worker."""
    return get_client(dask).submit(score_run.stage_unit, unit, index, run.out / score_run.STAGING,
                                   run.partition_rows, pure=False).result()


@task(name="score-partition", task_run_name="score {staged.name}", **SCORE_TASK)
def score_partition_task(staged: Path, run: score_run.ScoreRun, dask: DaskConfig) -> dict[str, Any]:
    """Score one partition on a Dask worker (which keeps the model loaded between partitions)."""
    return get_client(dask).submit(
        scoring.score_partition, staged, run.scores_file(staged.name),
        run.rejects_file(staged.name), run.settings, pure=False,
    ).result()
