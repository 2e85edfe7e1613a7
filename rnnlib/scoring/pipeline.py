"""`score()`: a bundle over dumps of new text, the run's order written once.

    plan (inputs fingerprinted, bundle found) -> each input read into partitions -> each
    partition scored as soon as its input is read -> every row accounted in the manifest

Where each step runs is the `steps` given: `OnDask` (a Dask client, or this process) by default,
`rnnlib_tasks.score.PrefectScoring` from the `score` flow, which runs each input and partition as
a Prefect task with retries. A failed input or partition is recorded with its reason and the
others go on; the run then raises `ScoringFailed`, its report written, and a rerun scores only
what is missing (see `rnnlib.scoring.output`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tqdm import tqdm

from rnnlib.config import ScoreConfig
from rnnlib.errors import InputError
from rnnlib.scoring.output import PartitionedInput, ScoreReport, ScoreRun, input_name, partition_input, plan_run
from rnnlib.scoring.partition import PartitionScores, score_partition

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)


class ScoringFailed(RuntimeError):
    """Some inputs or partitions failed; the others finished and are in the output."""

    def __init__(self, report: ScoreReport, out: Path) -> None:
        self.report = report
        super().__init__(
            f"{len(report.failed)} failed (the rest is written to {out}): "
            + "; ".join(v if v.startswith(k) else f"{k}: {v}" for k, v in report.failed.items())
        )


class ScoringSteps(Protocol):
    """Where a scoring run's pieces run."""

    def plan(self, config: ScoreConfig) -> ScoreRun: ...

    def read(self, run: ScoreRun) -> Iterator[tuple[str, PartitionedInput | BaseException]]:
        """Every input read into partitions, yielded as each is done."""
        ...

    def submit(self, run: ScoreRun, part: Path) -> None:
        """Start scoring a partition."""
        ...

    def scored(self) -> Iterator[tuple[str, PartitionScores | BaseException]]:
        """Every submitted partition, yielded as each is scored."""
        ...


class OnDask:
    """The pieces on a Dask cluster, each read or scored on a worker (which keeps the model
    loaded between partitions), a partition's scoring started as soon as its input is read;
    without a client, in this process one after the other."""

    def __init__(self, client: Client | None = None) -> None:
        self.client = client
        self.scoring: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = []

    def plan(self, config: ScoreConfig) -> ScoreRun:
        return plan_run(config)

    def read(self, run: ScoreRun) -> Iterator[tuple[str, PartitionedInput | BaseException]]:
        args = (run.staging, run.partition_rows, run.partition_bytes)
        yield from self._run([(input_name(u), partition_input, (u, i, *args)) for i, u in enumerate(run.units)])

    def submit(self, run: ScoreRun, part: Path) -> None:
        args = (part, run.scores_file(part.name), run.rejects_file(part.name), run.settings)
        self.scoring.append((part.name, score_partition, args))
        if self.client is not None:  # started now, beside the inputs still being read
            self.scoring[-1] = (part.name, self.client.submit(score_partition, *args, pure=False), ())

    def scored(self) -> Iterator[tuple[str, PartitionScores | BaseException]]:
        pieces, self.scoring = self.scoring, []
        yield from self._run(pieces)

    def _run(self, pieces: list[tuple[str, Any, tuple[Any, ...]]]) -> Iterator[tuple[str, Any]]:
        """Each piece's name and result (or exception), in the order they finish."""
        if self.client is None:
            for name, fn, args in pieces:
                try:
                    yield name, fn(*args)
                except Exception as exc:  # noqa: BLE001 - recorded against its piece; the others go on
                    yield name, exc
            return
        from distributed import Future, as_completed

        futures = {
            fn if isinstance(fn, Future) else self.client.submit(fn, *args, pure=False): name
            for name, fn, args in pieces
        }
        for future in as_completed(list(futures), loop=self.client.loop) if futures else ():
            try:
                yield futures[future], future.result()
            except Exception as exc:  # noqa: BLE001 - recorded against its piece; the others go on
                yield futures[future], exc


def score(config: ScoreConfig, client: Client | None = None, *, steps: ScoringSteps | None = None) -> ScoreReport:
    """Score every row of the inputs (or reject it with a reason), on `client` (None: in this
    process) or through `steps`; resumable and idempotent: a finished run is reported as it is,
    an unfinished one scores only its missing partitions. Raises `ScoringFailed` when any input
    or partition failed, after writing the rest."""
    steps = steps or OnDask(client)
    run = steps.plan(config)
    with run.lock():  # one run at a time per output directory
        if (finished := run.open(config.overwrite)) is not None:
            log.info("already complete: %s rows in %s were scored by this bundle with these options; "
                     "nothing to do (overwrite to redo)", finished.rows, run.out)  # fmt: skip
            return finished
        report = _score(run, steps)
    if report.failed:
        raise ScoringFailed(report, run.out)
    log.info("scored %s rows, rejected %s, in %.1f s (%.0f rows/s); output in %s", report.scored,
             report.rejected or "none", report.seconds, report.rows_per_second, run.out)  # fmt: skip
    return report


def _score(run: ScoreRun, steps: ScoringSteps) -> ScoreReport:
    """Read every input and score each partition as soon as its input is read."""
    start = time.perf_counter()
    failed: dict[str, str] = {}
    staged: list[PartitionedInput] = []
    submitted = 0
    for name, unit in steps.read(run):
        if isinstance(unit, BaseException):
            failed[name] = reason(unit)
            continue
        staged.append(unit)
        if not run.engine_reason:  # the engine, fixed before any partition is scored
            run = run.with_engine(unit)
        for part in run.pending([unit]):
            steps.submit(run, part)
            submitted += 1
    stats = []
    with tqdm(total=submitted, unit="partition", desc="scoring", disable=not sys.stderr.isatty()) as bar:
        for name, result in steps.scored():
            if isinstance(result, BaseException):
                failed[name] = reason(result)
            else:
                stats.append(result)
            bar.update(1)
    return run.finish(sorted(staged, key=lambda u: u.dir), failed, stats, time.perf_counter() - start)


def reason(exc: BaseException) -> str:
    """Bad input says what and where itself; anything else also says what kind of error."""
    return str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
