"""Prefect tasks of the `score` flow, and `PrefectScoring`, which runs a scoring run's pieces
as them.

The run's state lives in its output directory (see rnnlib.scoring.output), not in Prefect's
cache: a partition is done when its file exists. Each input and each partition is its own task
run, so a transient I/O fault is retried for that piece only and a bad one does not sink the
others.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, as_completed

from rnnlib.config import DaskConfig, ScoreConfig
from rnnlib.scoring.output import PartitionedInput, ScoreRun, input_name, partition_input, plan_run
from rnnlib.scoring.partition import PartitionScores, score_partition
from rnnlib_tasks.dask_clients import get_client
from rnnlib_tasks.options import TASK_OPTIONS


@task(name="plan-scoring", task_run_name="plan scoring", **TASK_OPTIONS)
def plan_task(config: ScoreConfig) -> ScoreRun:
    """Resolve the inputs (fingerprinting every file) and the bundle."""
    return plan_run(config)


@task(name="read-input", task_run_name="read {name}", **TASK_OPTIONS)
def read_input_task(name: str, index: int, run: ScoreRun, dask: DaskConfig) -> PartitionedInput:
    """Read one input into canonical partitions, on a Dask worker."""
    unit = run.units[index]
    args = (unit, index, run.staging, run.partition_rows, run.partition_bytes)
    return get_client(dask).submit(partition_input, *args, pure=False).result()


@task(name="score-partition", task_run_name="score {staged.name}", **TASK_OPTIONS)
def score_partition_task(staged: Path, run: ScoreRun, dask: DaskConfig) -> PartitionScores:
    """Score one partition on a Dask worker (which keeps the model loaded between partitions)."""
    args = (staged, run.scores_file(staged.name), run.rejects_file(staged.name), run.settings)
    return get_client(dask).submit(score_partition, *args, pure=False).result()


class PrefectScoring:
    """A scoring run's pieces (`rnnlib.scoring.pipeline.ScoringSteps`) as the tasks above: each
    input and partition a task run of its own, retried alone, its work on the Dask cluster
    `dask` describes; the share of partitions scored published as a progress artifact."""

    def __init__(self, dask: DaskConfig) -> None:
        self.dask = dask
        self.scoring: dict[PrefectFuture[PartitionScores], str] = {}

    def plan(self, config: ScoreConfig) -> ScoreRun:
        return plan_task(config)

    def read(self, run: ScoreRun) -> Iterator[tuple[str, PartitionedInput | BaseException]]:
        names = [input_name(unit) for unit in run.units]
        yield from _completed({read_input_task.submit(n, i, run, self.dask): n for i, n in enumerate(names)})

    def submit(self, run: ScoreRun, part: Path) -> None:
        self.scoring[score_partition_task.submit(part, run, self.dask)] = part.name

    def scored(self) -> Iterator[tuple[str, PartitionScores | BaseException]]:
        pending, self.scoring = self.scoring, {}
        progress = create_progress_artifact(0.0, key="scoring-progress", description="partitions scored")
        for done, outcome in enumerate(_completed(pending), 1):
            yield outcome
            update_progress_artifact(progress, 100.0 * done / len(pending))


def _completed(futures: dict[PrefectFuture[Any], str]) -> Iterator[tuple[str, Any]]:
    """Each task's name and result (or exception), in the order they finish."""
    for future in as_completed(list(futures)):
        try:
            yield futures[future], future.result()
        except Exception as exc:  # noqa: BLE001 - recorded against its piece; the others go on
            yield futures[future], exc
