"""Content-addressed stage outputs, shared by the library's drivers and the Prefect tasks.

A stage writes to `work_dir/<stage>/<key>/`, where the key names everything its output depends
on: a digest of the rnnlib source, the stage's parameters, and its inputs' content (file digests
for raw sources, the producing stage's key for upstream outputs, itself content-derived). A
complete output with the right key is reused, anything else is built, so two configurations
never overwrite each other and an unchanged rerun does no work.
"""

from __future__ import annotations

import contextvars
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from rnnlib.common.fingerprint import code_version, digest_json
from rnnlib.common.locks import file_lock
from rnnlib.common.stat_index import STAT_INDEX
from rnnlib.common.storage import MANIFEST, is_complete, read_json
from rnnlib.config import DaskConfig, SourceConfig
from rnnlib.sources.inputs import fingerprint_inputs

NOT_IN_KEY = (DaskConfig,)  # where the work runs does not change its result

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
_REUSE_ONLY = contextvars.ContextVar("reuse_only", default=False)


class NotCached(LookupError):
    """A stage output that would have to be built, met under `reused()`."""


def reused(run: Callable[[], T]) -> T | None:
    """`run()`'s result when every stage it runs is reused from the cache, else None, having built
    nothing: how a command finds out, cheaply, that a rerun has no work to do."""
    token = _REUSE_ONLY.set(True)
    try:
        return run()
    except NotCached:
        return None
    finally:
        _REUSE_ONLY.reset(token)


class InProcess:
    """How a pipeline's driver (`prepare`, `train_on`) runs its stages: each called here, one
    after the other. The flows pass `rnnlib_tasks.runner.PrefectTasks`, which runs each stage as
    its Prefect task; so a pipeline's order is written once, in its driver."""

    def run(self, stage: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return stage(*args, **kwargs)

    def start(self, stage: Callable[..., T], *args: Any, **kwargs: Any) -> Callable[[], T]:
        """A stage that what follows does not wait for: run at once here, submitted to run
        beside what follows by a task runner. Returns the call that waits for its result."""
        result = self.run(stage, *args, **kwargs)
        return lambda: result


IN_PROCESS = InProcess()


class StageOutput(BaseModel, Generic[M]):
    """What stages pass each other: where an output is and its manifest, never the data. The
    manifest is the stage's own typed model, validated once: when built, or when read back."""

    stage: str
    key: str
    path: str
    manifest: M
    cached: bool = False  # reused from an earlier run rather than built by this one
    seconds: float = 0.0  # what getting it took this run


def fingerprint(value: Any, work_dir: str | Path | None = None) -> Any:
    """What a stage parameter contributes to the key: content, not names or locations."""
    if isinstance(value, StageOutput):
        return value.key
    if isinstance(value, list):
        return [fingerprint(item, work_dir) for item in value]
    if isinstance(value, SourceConfig):
        how = value.model_dump(mode="json", exclude={"dataset", "inputs", "mirror", "cache_dir", "unlabelled"})
        index = Path(work_dir) / STAT_INDEX if work_dir is not None else None
        return {"content": fingerprint_inputs(value, index), **how}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def stage_key(stage: str, params: dict[str, Any], work_dir: str | Path | None = None, code: str | None = None) -> str:
    """The key of a stage's output; `code`: the digest of the code it runs (default: all of
    rnnlib); `work_dir` only says where input digests may be remembered."""
    return digest_json(
        {
            "stage": stage,
            "code": code or code_version(),
            "params": {k: fingerprint(v, work_dir) for k, v in sorted(params.items()) if not isinstance(v, NOT_IN_KEY)},
        }
    )


def stage_dir(work_dir: str | Path, stage: str, key: str) -> Path:
    return Path(work_dir).resolve() / stage / key


def lock_file(stage_folder: str | Path) -> Path:
    """The lock of a stage output folder (`<stage>/<key>` -> `<stage>/.<key>.lock`)."""
    folder = Path(stage_folder)
    return folder.with_name(f".{folder.name}.lock")


def run_stage(
    stage: str,
    params: dict[str, Any],
    build: Callable[[Path], M],
    code: Sequence[Callable[..., Any]],
    manifest: type[M],
) -> StageOutput[M]:
    """The stage's output for these parameters: reused when a complete one is on disk (a
    deleted or half-written folder is rebuilt; its manifest read back as `manifest`), else
    `build(out_dir)`, which writes the output and returns its manifest.
    `params` must hold `work_dir`; every other value goes into the key, and so does the source
    of the module `build` is written in and of everything the `code` functions' modules import.

    While it runs, the stage shares its inputs' locks (so `prune` cannot remove them) and holds
    its own output's: exclusively to build it (a second run of the same stage waits, then reuses
    the output), shared to reuse it. Inside `holding_outputs()` the output stays held after."""
    start = time.perf_counter()
    digest = code_version(*sorted({fn.__module__ for fn in code}), own=build.__module__)
    key = stage_key(stage, {k: v for k, v in params.items() if k != "work_dir"}, params["work_dir"], digest)
    out = stage_dir(params["work_dir"], stage, key)
    with ExitStack() as locks:
        upstreams = [
            u for v in params.values() for u in (v if isinstance(v, list) else [v]) if isinstance(u, StageOutput)
        ]
        for upstream in upstreams:
            locks.enter_context(file_lock(lock_file(upstream.path), shared=True))
        written, cached = _reuse_or_build(out, stage, key, build, manifest)
    if (held := _HELD.get()) is not None:
        held.hold(out)
    return StageOutput[manifest](
        stage=stage,
        key=key,
        path=str(out),
        manifest=written,
        cached=cached,
        seconds=round(time.perf_counter() - start, 3),
    )


def _reuse_or_build(out: Path, stage: str, key: str, build: Callable[[Path], M], manifest: type[M]) -> tuple[M, bool]:
    """A complete output is reused under a shared lock (readers never wait on each other, nor on
    a pipeline run holding it); building takes the exclusive one, then looks again."""
    with file_lock(lock_file(out), shared=True):
        if is_complete(out):
            os.utime(out / MANIFEST)  # last used now: what `prune` goes by
            return manifest.model_validate(read_json(out / MANIFEST)), True
    with file_lock(lock_file(out)):
        if is_complete(out):  # built meanwhile
            os.utime(out / MANIFEST)
            return manifest.model_validate(read_json(out / MANIFEST)), True
        if _REUSE_ONLY.get():
            raise NotCached(f"{stage}/{key}")
        return build(out), False


class HeldOutputs:
    """Shared locks on every output a pipeline run has made or reused, kept until the run ends: a
    later stage reads them again (evaluation reads the vocabulary after a long fit), so `prune`
    must not remove them in between. Stages of one run may finish in several threads."""

    def __init__(self) -> None:
        self._locks = ExitStack()
        self._held: set[Path] = set()
        self._guard = threading.Lock()

    def hold(self, out: Path) -> None:
        with self._guard:
            if out not in self._held:
                self._locks.enter_context(file_lock(lock_file(out), shared=True))
                self._held.add(out)

    def release(self) -> None:
        with self._guard:
            self._locks.close()
            self._held.clear()


_HELD: contextvars.ContextVar[HeldOutputs | None] = contextvars.ContextVar("held_outputs", default=None)


@contextmanager
def holding_outputs() -> Iterator[None]:
    """For the block, hold every stage output made or reused in it (see `HeldOutputs`); inside
    another such block, the outer one holds them."""
    if _HELD.get() is not None:
        yield
        return
    held = HeldOutputs()
    token = _HELD.set(held)
    try:
        yield
    finally:
        _HELD.reset(token)
        held.release()


class CachedOutput(BaseModel):
    """One stage output folder under a work dir."""

    stage: str
    key: str
    path: str
    bytes: int
    age_days: float  # since it was last written or reused
    complete: bool


# what a stage writes under `<stage>/`: `<key>`, a training run's `<key>.partial`, a build's
# scratch `.<key>.<id>.tmp`; each beside its lock `.<key>.lock`
OUTPUT_NAME = re.compile(r"(?P<key>[0-9a-f]{32})(\.partial)?|\.(?P<scratch>[0-9a-f]{32})\.[0-9a-f]{32}\.tmp")


def is_stage_output(folder: Path) -> bool:
    """A folder a stage wrote: named as stages name their outputs, and finished (its manifest)
    or begun by a stage (its lock beside it). Nothing else under a work dir is touched."""
    name = OUTPUT_NAME.fullmatch(folder.name)
    if name is None or not folder.is_dir() or folder.is_symlink():
        return False
    return is_complete(folder) or lock_file(folder.with_name(name["key"] or name["scratch"])).is_file()


def cached_outputs(work_dir: str | Path) -> list[CachedOutput]:
    """Every stage output folder under `work_dir`, finished or not (a killed run's leftovers)."""
    found = []
    now = time.time()
    for folder in sorted(Path(work_dir).glob("*/*")):
        if not is_stage_output(folder):
            continue
        files = [f.stat() for f in folder.rglob("*") if f.is_file()]
        newest = max([folder.stat().st_mtime, *(f.st_mtime for f in files)])
        found.append(
            CachedOutput(
                stage=folder.parent.name,
                key=folder.name,
                path=str(folder),
                bytes=sum(f.st_size for f in files),
                age_days=round((now - newest) / 86400, 2),
                complete=is_complete(folder),
            )
        )
    return found


def output_key(folder_name: str) -> str:
    """The key a folder belongs to: itself, a training run's `<key>.partial`, or a build's
    scratch folder `.<key>.<id>.tmp`."""
    if folder_name.startswith(".") and folder_name.endswith(".tmp"):
        return folder_name[1:].split(".")[0]
    return folder_name.removesuffix(".partial")


def prune(
    work_dir: str | Path, *, older_than_days: float, keep: set[str] = frozenset(), dry_run: bool = False
) -> list[CachedOutput]:
    """Remove stage outputs not written or reused for `older_than_days`, except those whose key is in
    `keep` and those a running stage holds (it would be waiting on their lock). Returns what was
    (or, with `dry_run`, would be) removed."""
    removed = []
    for output in cached_outputs(work_dir):
        key = output_key(output.key)
        if output.age_days < older_than_days or key in keep:
            continue
        with file_lock(lock_file(Path(output.path).with_name(key)), wait=False) as free:
            if not free:
                continue
            if not dry_run:
                shutil.rmtree(output.path)
            removed.append(output)
    return removed
