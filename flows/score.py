"""The `score` flow: a model bundle applied to dumps of new text, one task per input read and
per partition scored, so a transient fault is retried for that piece only and a bad input is
reported while the rest is scored."""

from __future__ import annotations

import os
import shutil

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel

from rnnlib.config import InputSpec, ScoreConfig
from rnnlib.errors import InputError
from rnnlib.scoring.output import ScoreReport, output_dir_for
from rnnlib.scoring.pipeline import ScoringFailed, reason, score
from rnnlib_flows.reports import publish_scoring
from rnnlib_tasks.dask_clients import close_clients
from rnnlib_tasks.score import PrefectScoring


class FilesFailed(RuntimeError):
    """Some arrived files could not be scored; the others were."""


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
                failed[file.path] = reason(exc)
                log.error("%s: %s", file.path, failed[file.path])
    finally:
        close_clients()
    if failed:
        raise FilesFailed(
            f"{len(failed)} of {len(files)} files failed: "
            + "; ".join(f"{path}: {why}" for path, why in failed.items())
        )
    return reports


def _score_output(config: ScoreConfig) -> ScoreReport:
    """One output folder: what is not scored yet scored, the report published (a run already
    complete has nothing new to publish); raises when any input or partition failed."""
    try:
        report = score(config, steps=PrefectScoring(config.dask))
    except ScoringFailed as failed:
        publish_scoring(failed.report)
        raise
    if not report.already_complete:
        publish_scoring(report)
    return report
