"""Prefect tasks of the `score` flow: planning, reading each input, scoring each partition.

The run's state lives in its output directory (see rnnlib.scoring.run), not in Prefect's cache:
a partition is done when its file exists. Each input and each partition is its own task run, so
a transient I/O fault is retried for that piece only and a bad one does not sink the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from rnnlib.config import DaskConfig, ScoreConfig
from rnnlib.scoring import partition, run
from rnnlib_tasks.dask_clients import get_client
from rnnlib_tasks.options import TASK_OPTIONS


@task(name="plan-scoring", task_run_name="plan scoring", **TASK_OPTIONS)
def plan_task(config: ScoreConfig) -> run.ScoreRun:
    """Resolve the inputs (fingerprinting every file) and the bundle."""
    return run.plan_run(config)


@task(name="read-input", task_run_name="read {name}", **TASK_OPTIONS)
def read_input_task(name: str, index: int, scoring: run.ScoreRun, dask: DaskConfig) -> run.PartitionedInput:
    """Read one input into canonical partitions, on a Dask worker."""
    return (
        get_client(dask)
        .submit(
            run.partition_input,
            scoring.units[index],
            index,
            scoring.staging,
            scoring.partition_rows,
            scoring.partition_bytes,
            pure=False,
        )
        .result()
    )


@task(name="score-partition", task_run_name="score {staged.name}", **TASK_OPTIONS)
def score_partition_task(staged: Path, scoring: run.ScoreRun, dask: DaskConfig) -> dict[str, Any]:
    """Score one partition on a Dask worker (which keeps the model loaded between partitions)."""
    return (
        get_client(dask)
        .submit(
            partition.score_partition,
            staged,
            scoring.scores_file(staged.name),
            scoring.rejects_file(staged.name),
            scoring.settings,
            pure=False,
        )
        .result()
    )
