"""Atomic, durable stage outputs: a stage directory either holds a finished result (with its
manifest) or does not exist, so a crash, or a power loss, never leaves a half-written output
behind under a final name."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

MANIFEST = "_manifest.json"  # "_" keeps Parquet dataset readers off it


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_replace(src: str | Path, dst: str | Path) -> None:
    """Rename a finished file or folder into place so that a power loss cannot leave an empty or
    partial one under the final name: its bytes (every file of a folder) reach the disk before
    the rename, and the rename itself (the parent directory) before this returns."""
    src, dst = Path(src), Path(dst)
    for path in [*src.rglob("*"), src] if src.is_dir() else [src]:  # files and folders alike
        _fsync(path)
    os.replace(src, dst)
    _fsync(dst.parent)


def write_json(path: str | Path, value: Any, compact: bool = False) -> None:
    """Write JSON (a typed model: its JSON form) atomically (temporary name, then rename).
    Indented for people to read, or `compact` for big values: only then does Python use its C
    encoder."""
    path = Path(path)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    text = json.dumps(value, sort_keys=True) if compact else json.dumps(value, indent=2, sort_keys=True)
    tmp.write_text(text, encoding="utf-8")
    durable_replace(tmp, path)


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (temporary name, then rename), its folder made if missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text, encoding="utf-8")
    durable_replace(tmp, path)


def write_parquet(table: pa.Table, path: str | Path) -> None:
    """Write a Parquet file atomically: readers see the whole file or none (a dot-name keeps the
    partial file out of `part-*` globs)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    pq.write_table(table, tmp)
    durable_replace(tmp, path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def partitions(stage_dir: str | Path) -> list[Path]:
    """The Parquet partitions of a stage output, in order."""
    return sorted(Path(stage_dir).glob("part-*.parquet"))


def is_complete(stage_dir: str | Path) -> bool:
    return (Path(stage_dir) / MANIFEST).is_file()


@contextmanager
def building(stage_dir: str | Path) -> Iterator[Path]:
    """Yield a scratch directory that becomes `stage_dir` only if the block succeeds."""
    final = Path(stage_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = final.with_name(f".{final.name}.{uuid.uuid4().hex}.tmp")
    scratch.mkdir()
    try:
        yield scratch
        if final.exists():  # an incomplete leftover of a crashed run
            shutil.rmtree(final)
        durable_replace(scratch, final)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
