"""The `score` flow: a model bundle applied to dumps of new text, one task per input read and
per partition scored, so a transient fault is retried for that piece only and a bad input is
reported while the rest is scored."""

from __future__ import annotations

import os
import shutil
import sys
import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel
from tqdm import tqdm

from rnnlib.config import InputSpec, ScoreConfig
from rnnlib.errors import InputError
from rnnlib.scoring.run import ScoreReport, ScoreRun, input_name, output_dir_for
from rnnlib_flows.reports import publish_scoring
from rnnlib_tasks.dask_clients import close_clients
from rnnlib_tasks.score import plan_task, read_input_task, score_partition_task


class ScoringFailed(RuntimeError):
    """Some inputs or partitions failed; the others finished and are in the output."""


class ArrivedFile(BaseModel):
    """A file as the watcher found it complete: a replaced file is a new arrival."""

    path: str
    size: int | None = None
    mtime_ns: int | None = None

    def unchanged(self) -> bool:
        """Whether the file is still the version announced (no stat announced: any version)."""
        if self.size is None:
            return True
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_size, st.st_mtime_ns) == (self.size, self.mtime_ns)


@flow(name="score", task_runner=ThreadPoolTaskRunner(max_workers=64))  # threads only wait on Dask
def score_flow(config: ScoreConfig, roots: list[str] | None = None) -> ScoreReport:
    """Score every row of the inputs (or reject it with a reason); resumable and idempotent.
    `config.bundle` may be a model registry folder: its current model is used. `roots`, when
    given (the ad-hoc deployment's), replace `config.roots`: the folders the run may use."""
    if roots is not None:
        config = config.model_copy(update={"roots": roots})
    try:
        return _score_output(config)
    finally:
        close_clients()


@flow(name="score-new-files", task_runner=ThreadPoolTaskRunner(max_workers=64))
def score_new_files_flow(
    files: list[ArrivedFile],
    registry: str = "models",
    output_root: str = "scored",
    text_column: str = "text",
    id_column: str | None = None,
    format: str = "auto",
) -> list[ScoreReport]:
    """Score newly arrived files with the registry's current model, each into its own folder under
    `output_root`, named after the file and a digest of its path, size and modification time: two
    files, or a file replaced under the same name, never share an output. Paths are taken
    literally, never as globs. A bad file is reported and the others are scored (one Dask cluster
    serves them all). What the file-arrival trigger runs, once per batch the watcher announces."""
    log = get_run_logger()
    reports, failed = [], {}
    try:
        for file in files:
            if not file.unchanged():  # its new version is announced by the watcher on its own
                log.warning("%s: replaced since it was announced; that version is gone, not scored", file.path)
                continue
            version = f"{file.size}:{file.mtime_ns}" if file.size is not None else None
            config = ScoreConfig(
                bundle=registry,
                output=str(output_dir_for(file.path, output_root, version)),
                inputs=[
                    InputSpec(
                        path=file.path, format=format, text_columns=[text_column], id_column=id_column, glob=False
                    )
                ],
            )
            try:
                report = _score_output(config)
                if not file.unchanged():  # what was read may mix two versions: never kept under this one
                    shutil.rmtree(config.output, ignore_errors=True)
                    raise InputError(
                        "replaced while it was scored; its new version is scored on its own", file=file.path
                    )
                reports.append(report)
            except Exception as exc:  # noqa: BLE001 - a bad file is reported, the others go on
                failed[file.path] = _reason(exc)
                log.error("%s: %s", file.path, failed[file.path])
    finally:
        close_clients()
    if failed:
        raise ScoringFailed(
            f"{len(failed)} of {len(files)} files failed: "
            + "; ".join(f"{path}: {why}" for path, why in failed.items())
        )
    return reports


def _score_output(config: ScoreConfig) -> ScoreReport:
    """One output folder: score what is not scored yet, publish the report, and raise when any
    input or partition failed."""
    log = get_run_logger()
    run = plan_task(config)
    with run.lock():  # one run at a time per output directory
        if (finished := run.open(config.overwrite)) is not None:
            log.info(
                "already complete: %s rows in %s were scored by this bundle with these options; "
                "nothing to do (overwrite to redo)",
                finished.rows,
                run.out,
            )
            return finished
        report = _score(run, config)
    publish_scoring(report)
    if report.failed:
        raise ScoringFailed(
            f"{len(report.failed)} failed (the rest is written to {run.out}): "
            + "; ".join(v if v.startswith(k) else f"{k}: {v}" for k, v in report.failed.items())
        )
    log.info(
        "scored %s rows, rejected %s, in %.1f s (%.0f rows/s); output in %s",
        report.scored,
        report.rejected or "none",
        report.seconds,
        report.rows_per_second,
        run.out,
    )
    return report


def _score(run: ScoreRun, config: ScoreConfig) -> ScoreReport:
    """Read every input and score each partition as soon as its input is read; a failure is
    recorded against its input or partition and the others go on."""
    start = time.perf_counter()
    failed: dict[str, str] = {}
    staged, stats, done = [], [], 0
    reading = {
        read_input_task.submit(input_name(unit), i, run, config.dask): input_name(unit)
        for i, unit in enumerate(run.units)
    }
    scoring = {}
    bar = tqdm(total=0, unit="partition", desc="scoring", disable=not sys.stderr.isatty())
    progress = create_progress_artifact(0.0, key="scoring-progress", description="partitions scored")
    for future in as_completed(list(reading)):
        try:
            unit = future.result()
        except Exception as exc:  # noqa: BLE001 - a bad input is reported, the others go on
            failed[reading[future]] = _reason(exc)
            continue
        staged.append(unit)
        for part in run.pending([unit]):
            scoring[score_partition_task.submit(part, run, config.dask)] = part.name
        bar.total = len(scoring)
        bar.refresh()
    for future in as_completed(list(scoring)):
        try:
            stats.append(future.result())
        except Exception as exc:  # noqa: BLE001 - a bad partition is reported, the others go on
            failed[scoring[future]] = _reason(exc)
        done += 1
        bar.update(1)
        update_progress_artifact(progress, 100.0 * done / max(len(scoring), 1))
    bar.close()
    return run.finish(sorted(staged, key=lambda u: u.dir), failed, stats, time.perf_counter() - start)


def _reason(exc: BaseException) -> str:
    """Bad input says what and where itself; anything else also says what kind of error."""
    return str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
