"""A scoring run's output directory: what makes a run resumable, idempotent and fully accounted.

    <output>/_run.json         the run's identity (bundle version, inputs' content, options)
    <output>/_staging/unit-*/  inputs read into canonical partitions (removed once complete)
    <output>/scores/part-*.parquet   one per partition, written atomically: its presence = done
    <output>/rejects/part-*.parquet  rows not scored, each with its reason
    <output>/_manifest.json    the accounting: input rows = scored + rejected, per input file
    <output>/.stat-index/      input digests by stat, so a rerun does not read unchanged inputs

A run started again with the same identity skips the finished partitions; a finished run is a
no-op; a different run never writes into another run's output. `rnnlib.scoring.pipeline.score`
runs it, on a Dask client, in this process or as the `score` flow's Prefect tasks.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import posixpath
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel

from rnnlib.common.accounting import KEPT, AccountingError, summarise
from rnnlib.common.fingerprint import code_version, digest_bytes, digest_json
from rnnlib.common.stat_index import STAT_INDEX
from rnnlib.common.storage import MANIFEST, building, is_complete, read_json, write_json
from rnnlib.config import InputSpec, ScoreConfig, SourceConfig
from rnnlib.errors import InputError
from rnnlib.modeling.bundle import CONFIG, locate_bundle
from rnnlib.prepare.ingest import ingest_unit
from rnnlib.scoring.partition import (
    DEFAULT_MAX_LENGTH,
    PartitionScores,
    ScoringSettings,
    resolve_engine,
    score_partition,
)
from rnnlib.sources.inputs import URL, filesystem, fingerprint_inputs, resolve_inputs
from rnnlib.sources.readers import COMPRESSIONS, SUFFIX_FORMATS, ReadUnit, plan_units

if TYPE_CHECKING:
    pass

RUN_FILE = "_run.json"
STAGING, SCORES, REJECTS = "_staging", "scores", "rejects"
log = logging.getLogger(__name__)


class FileAccount(BaseModel):
    """One input file: rows read = scored + rejected (+ unscored, only where a partition failed)."""

    rows: int
    scored: int
    rejected: dict[str, int]
    unscored: int


class ScoreReport(BaseModel):
    """A scoring run's accounting, as written to its `_manifest.json`."""

    complete: bool
    bundle_version: str
    key: str
    rows: int
    scored: int
    rejected: dict[str, int]
    unscored: int
    truncated: int
    labels: dict[str, int]
    files: dict[str, FileAccount]
    failed: dict[str, str]  # input or partition -> why it could not be scored
    ignored: list[str]  # files under input directories that are not a known format
    engine: str = ""  # what ran the model (`auto` resolved), and why
    engine_reason: str = ""
    # what this attempt did (a resumed run counts only its own work here)
    seconds: float = 0.0
    partitions_scored_now: int = 0
    rows_scored_now: int = 0
    rows_per_second: float = 0.0
    mb_per_second: float = 0.0
    already_complete: bool = False  # a finished run asked again: nothing was done


class PartitionedInput(BaseModel):
    """One read unit staged as canonical partitions."""

    input: str  # the input file (or folder) it is accounted under
    dir: str
    parts: list[str]
    rows: int


@dataclass(frozen=True)
class ScoreRun:
    """A planned run: where it writes, how to read its inputs and how to score them."""

    out: Path
    key: str
    units: tuple[ReadUnit, ...]
    settings: ScoringSettings
    ignored: tuple[str, ...]  # files under input directories that are not a known format
    partition_rows: int
    partition_bytes: int
    engine: str  # as configured; `settings.engine` is what runs once `with_engine` resolved it
    engine_cache: Path
    engine_reason: str = ""

    @property
    def staging(self) -> Path:
        return self.out / STAGING

    def scores_file(self, part: str) -> Path:
        return self.out / SCORES / part

    def rejects_file(self, part: str) -> Path:
        return self.out / REJECTS / part

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Exclusive use of the output directory by this process (see `output_lock`)."""
        return output_lock(self.out)

    def open(self, overwrite: bool) -> ScoreReport | None:
        """Make the output ready for this run; the report of a run already finished there (then
        there is nothing to do), else None. Refuses an output holding something else."""
        status = open_output(self, overwrite)
        if status == "complete":
            return self.report().model_copy(update={"already_complete": True})
        if status == "resume":
            log.info("resuming the unfinished run in %s", self.out)
        return None

    def report(self) -> ScoreReport:
        return ScoreReport.model_validate(read_json(self.out / MANIFEST))

    def with_engine(self, staged: PartitionedInput) -> ScoreRun:
        """The run with the engine it scores with: as configured, or `auto` measured on the
        rows of a staged input (see `resolve_engine`); said in the log and the manifest."""
        sample = pq.read_table(Path(staged.dir) / staged.parts[0]) if staged.parts else pa.table({"text": []})
        settings, reason = resolve_engine(self.settings, self.engine, sample, self.engine_cache)
        log.info("scoring engine %s (%s)", settings.engine, reason)
        return replace(self, settings=settings, engine_reason=reason)

    def pending(self, staged: list[PartitionedInput]) -> list[Path]:
        """Staged partitions whose scores are not written yet."""
        return [Path(unit.dir) / part for unit in staged for part in unit.parts if not self.scores_file(part).exists()]

    def finish(
        self, staged: list[PartitionedInput], failed: dict[str, str], stats: list[PartitionScores], seconds: float
    ) -> ScoreReport:
        """Account for every row from what is on disk, and write the manifest."""
        engine = {"engine": self.settings.engine, "engine_reason": self.engine_reason}
        return account(self, staged, failed, {**throughput(stats, seconds), **engine})


def _known_format(path: str) -> bool:
    stem, suffix = posixpath.splitext(path.lower())
    if suffix in COMPRESSIONS:
        suffix = posixpath.splitext(stem)[1]
    return suffix in SUFFIX_FORMATS


def expand_directories(specs: list[InputSpec]) -> tuple[list[tuple[InputSpec, str | None]], list[str]]:
    """A directory given with format `auto` means every file under it, each named relative to
    the directory's parent (so `dump/a/x.jsonl` and `dump/b/x.jsonl` stay apart); hidden files
    (a name starting with ".": partial writes, tools' state) and files of an unknown format are
    listed as ignored rather than scored or failing the run. Labels are never read. Returns
    (spec, base folder or None) pairs."""
    expanded: list[tuple[InputSpec, str | None]] = []
    ignored: list[str] = []
    for spec in specs:
        spec = spec.model_copy(update={"label_column": None})
        fs, path = filesystem(spec.path)
        if spec.format != "auto" or not fs.isdir(path):
            expanded.append((spec, None))
            continue
        files = sorted(fs.find(path))
        if not files:
            raise InputError("directory holds no file", file=spec.path)
        base = posixpath.dirname(path.rstrip("/"))
        for file in files:
            url = fs.unstrip_protocol(file) if "://" in spec.path else file
            hidden = any(part.startswith(".") for part in file[len(path) :].split("/"))
            regular = not isinstance(fs, LocalFileSystem) or os.path.isfile(file)  # never a FIFO
            if _known_format(file) and not hidden and regular:
                expanded.append((spec.model_copy(update={"path": url, "glob": False}), base))
            else:
                ignored.append(url)
    if not expanded:
        raise InputError(f"no input of a known format (ignored: {ignored[:5]})")
    return expanded, ignored


def plan_run(config: ScoreConfig) -> ScoreRun:
    """Resolve the inputs and the bundle into a run whose key names everything its result
    depends on (the bundle's version, every input file's content, the options)."""
    confine(config.roots, [config.bundle, config.output, *(spec.path for spec in config.inputs)])
    bundle_dir = locate_bundle(config.bundle)
    confine(config.roots, [str(bundle_dir)])
    if not (bundle_dir / CONFIG).is_file():
        raise InputError(f"not a model bundle or registry: {CONFIG} is missing", file=config.bundle)
    bundle = read_json(bundle_dir / CONFIG)
    specs, ignored = expand_directories(config.inputs)
    units: list[ReadUnit] = []
    for spec, base in specs:
        for item in resolve_inputs(SourceConfig(inputs=[spec]))[0]:
            units += plan_units(item.fs, item.path, item.spec, config.partition_rows, base)
    confine(config.roots, [path for unit in units for path in unit.paths])  # links followed
    max_length = config.max_length or bundle["max_length"] or DEFAULT_MAX_LENGTH
    settings = ScoringSettings(
        bundle=str(bundle_dir.resolve()),
        version=bundle["version"],
        top_k=config.top_k,
        max_length=max_length,
        batch_size=config.batch_size,
        device=config.device,
    )
    identity = {
        "bundle_version": bundle["version"],
        "inputs": fingerprint_inputs(
            SourceConfig(inputs=[spec for spec, _ in specs]), Path(config.output) / STAT_INDEX
        ),
        "top_k": config.top_k,
        "max_length": max_length,
        "engine": config.engine,
        "partition_rows": config.partition_rows,
        "partition_bytes": config.partition_bytes,
        # the code that reads and scores rows: an edit elsewhere leaves a killed run resumable
        "code": code_version(score_partition.__module__, ingest_unit.__module__, own=__name__),
    }
    return ScoreRun(
        Path(config.output).resolve(),
        digest_json(identity),
        tuple(units),
        settings,
        tuple(ignored),
        config.partition_rows,
        config.partition_bytes,
        config.engine,
        Path(config.engine_cache),
    )


def confine(roots: list[str], paths: list[str]) -> None:
    """Refuse a path outside `roots` (none: anywhere): a local path once its links are resolved,
    a URL by its prefix."""
    if not roots:
        return
    local = [os.path.realpath(r) for r in roots if not URL.match(r)]
    prefixes = [r.rstrip("/") + "/" for r in roots if URL.match(r)]
    for path in paths:
        if URL.match(path):
            inside = any(path.startswith(prefix) for prefix in prefixes)
        else:
            real = os.path.realpath(path)
            inside = any(os.path.commonpath([real, root]) == root for root in local)
        if not inside:
            raise InputError(f"outside the folders this run may use (roots: {', '.join(roots)})", file=path)


def output_dir_for(path: str, root: str | Path, version: str | None = None) -> Path:
    """One output folder per input file: its name plus a digest of its full path (and of its
    `version`, e.g. size and modification time, when a file may be replaced under its name)."""
    identity = path if version is None else f"{path}\n{version}"
    return Path(root) / f"{posixpath.basename(path.rstrip('/'))}-{digest_bytes(identity.encode())[:10]}"


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Exclusive use of an output directory by one run: an OS lock on a file beside it, released
    by the system even when the process is killed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError("another scoring run is writing this output", file=str(out)) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_output(run: ScoreRun, overwrite: bool) -> str:
    """Make the output directory ready for `run`: `complete` (nothing to do), `resume`, or
    `new`. Refuses an output that holds something else, rather than mixing two runs."""
    out, run_file = run.out, run.out / RUN_FILE
    if out.exists() and any(p.name != STAT_INDEX for p in out.iterdir()):
        if not run_file.is_file():
            raise InputError(
                "output directory is not empty and holds no scoring run: choose an empty or new directory",
                file=str(out),
            )
        if overwrite:
            shutil.rmtree(out)
        elif read_json(run_file)["key"] != run.key:
            raise InputError(
                "output directory holds a different scoring run (another bundle, "
                "inputs or options): choose another directory or overwrite it",
                file=str(out),
            )
        elif is_complete(out) and not read_json(out / MANIFEST)["failed"]:
            return "complete"
        else:
            _remove_partial_files(out)
            return "resume"
    for name in (STAGING, SCORES, REJECTS):
        (out / name).mkdir(parents=True, exist_ok=True)
    write_json(run_file, {"key": run.key, "bundle_version": run.settings.version})
    return "new"


def _remove_partial_files(out: Path) -> None:
    """Temporary files and folders of a killed run (never a finished partition or staged input:
    those are renamed into place when complete)."""
    for name in (SCORES, REJECTS):
        for tmp in (out / name).glob(".*.tmp"):
            tmp.unlink()
    for tmp in (out / STAGING).glob(".*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    (out / MANIFEST).unlink(missing_ok=True)


def input_name(unit: ReadUnit) -> str:
    """The input a unit is accounted under: its file, or the folder given as input for
    one-document-per-file layouts."""
    if unit.spec.format == "folder_per_class":
        return unit.source(unit.root)
    return unit.source(unit.paths[0])


def partition_input(
    unit: ReadUnit, index: int, staging: Path, partition_rows: int, partition_bytes: int
) -> PartitionedInput:
    """Read one unit into canonical partitions under the staging folder (atomically, so a
    killed run re-reads only the units it had not finished)."""
    target = staging / f"unit-{index:05d}"
    if is_complete(target):
        return PartitionedInput.model_validate(read_json(target / MANIFEST))
    with building(target) as scratch:
        result = ingest_unit(unit, index, scratch, partition_rows, partition_bytes, {}, labelled=False)
        manifest = {
            "input": input_name(unit),
            "dir": str(target),
            "parts": result["parts"],
            "rows": sum(sum(c.values()) for c in result["per_file"].values()),
        }
        write_json(scratch / MANIFEST, manifest)
    return PartitionedInput.model_validate(manifest)


def account(
    run: ScoreRun, staged: list[PartitionedInput], failed: dict[str, str], extra: dict[str, Any]
) -> ScoreReport:
    """The run's manifest, read back from what is on disk (so a resumed run counts the
    partitions of its earlier attempts too) and written as `_manifest.json`. Per input file:
    rows read = scored + rejected (+ unscored, only where a partition failed). Staging is
    removed once every partition is done."""
    per_input: dict[str, Counter] = defaultdict(Counter)
    labels: Counter = Counter()
    truncated = 0
    read: Counter = Counter()
    for unit in staged:
        read[unit.input] += unit.rows
        for part in unit.parts:
            if not run.scores_file(part).exists():
                continue
            scores = pq.read_table(run.scores_file(part), columns=["label", "truncated"])
            labels.update(_value_counts(scores["label"]))
            truncated += int(pc.sum(scores["truncated"]).as_py() or 0)
            per_input[unit.input][KEPT] += scores.num_rows
            if run.rejects_file(part).exists():
                reasons = pq.read_table(run.rejects_file(part), columns=["reason"])["reason"]
                per_input[unit.input].update(_value_counts(reasons))
    files = {}
    for name, rows in sorted(read.items()):
        done = summarise([per_input[name]])
        files[name] = {
            "rows": rows,
            "scored": done.kept,
            "rejected": done.rejected,
            "unscored": rows - done.rows,
        }
    unscored = sum(f["unscored"] for f in files.values())
    if any(f["unscored"] < 0 for f in files.values()) or (unscored and not failed):
        raise AccountingError(f"rows read and rows written differ: {files}")
    total = summarise(per_input.values())
    report = ScoreReport.model_validate(
        {
            "complete": not failed,
            "bundle_version": run.settings.version,
            "key": run.key,
            "rows": sum(read.values()),
            "scored": total.kept,
            "rejected": total.rejected,
            "unscored": unscored,
            "truncated": truncated,
            "labels": dict(sorted(labels.items())),
            "files": files,
            "failed": failed,
            "ignored": list(run.ignored),
            **extra,
        }
    )
    write_json(run.out / MANIFEST, report.model_dump(mode="json", exclude={"already_complete"}))
    if not failed:
        shutil.rmtree(run.out / STAGING, ignore_errors=True)
    return report


def _value_counts(column: Any) -> dict[str, int]:
    return {c["values"]: c["counts"] for c in pc.value_counts(column).to_pylist()}


def throughput(stats: list[PartitionScores], seconds: float) -> dict[str, Any]:
    """What this run (or resumed attempt) did, and how fast."""
    rows = sum(s.rows for s in stats)
    return {
        "seconds": round(seconds, 3),
        "partitions_scored_now": len(stats),
        "rows_scored_now": rows,
        "rows_per_second": round(rows / seconds, 1),
        "mb_per_second": round(sum(s.text_bytes for s in stats) / 1e6 / seconds, 2),
    }
