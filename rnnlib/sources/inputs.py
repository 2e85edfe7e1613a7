"""Inputs resolved to concrete files: a registered dataset or explicit paths, globs and URLs
become (filesystem, path, how to read it) triples, and their content is fingerprinted."""

from __future__ import annotations

import functools
import json
import os
import posixpath
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem, make_path_posix
from fsspec.implementations.zip import ZipFileSystem

from rnnlib.common.fingerprint import url_digest
from rnnlib.common.stat_index import StatIndex
from rnnlib.config import InputSpec, SourceConfig
from rnnlib.errors import InputError, is_transient
from rnnlib.sources.datasets import materialize
from rnnlib.sources.readers import infer_format

CLASS_LAYOUTS = ("folder_per_class", "file_per_class")
URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """A URL (`https://`, `s3://`, `zip://...::...`) through fsspec; anything else is a local
    path taken literally, so a file named `a.csv::b.csv` is that file, not a chain of URLs."""
    if URL.match(url):
        return fsspec.core.url_to_fs(url)
    return LocalFileSystem(), make_path_posix(url)


def check_regular(fs: fsspec.AbstractFileSystem, path: str, url: str) -> None:
    """Refuse a local FIFO, socket or device: reading one would block, or never end."""
    if isinstance(fs, LocalFileSystem):
        mode = os.stat(path).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise InputError("not a regular file (a FIFO, socket or device)", file=url)


def exists(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether `path` exists; a network fault is raised (to be retried), not taken for absence,
    as `fs.exists` would."""
    try:
        fs.info(path)
    except FileNotFoundError as exc:
        if is_transient(exc.__cause__ or exc.__context__):
            raise
        return False
    return True


@dataclass(frozen=True)
class ResolvedInput:
    fs: fsspec.AbstractFileSystem
    path: str
    spec: InputSpec


def resolve_inputs(source: SourceConfig) -> tuple[list[ResolvedInput], dict[str, str]]:
    """Turn the source config into concrete (filesystem, path, spec) triples; globs expand."""
    source = materialize(source)
    resolved: list[ResolvedInput] = []
    for spec in source.inputs:
        url = spec.path
        fs, path = filesystem(url)
        if path.lower().endswith(".zip") and spec.format in CLASS_LAYOUTS:
            if not fs.exists(path):
                raise InputError("file not found", file=url)
            fs, path = ZipFileSystem(fo=url), ""
        paths = sorted(fs.glob(path)) if spec.glob and any(c in path for c in "*?[") else [path]
        if not paths or (path and not exists(fs, paths[0])):
            raise InputError("file not found" if len(paths) <= 1 else "no file matches", file=url)
        for p in paths:
            check_regular(fs, p, url)
            fmt = spec.format if spec.format != "auto" else infer_format(fs, p)
            resolved.append(ResolvedInput(fs, p, spec.model_copy(update={"format": fmt})))
    return resolved, source.label_names


def is_labelled(inputs: list[ResolvedInput]) -> bool:
    """Whether the inputs carry labels; a mix of labelled and unlabelled inputs is refused."""
    flags = {i.spec.label_column is not None or i.spec.format in CLASS_LAYOUTS for i in inputs}
    if len(flags) > 1:
        raise InputError("some inputs have labels and others not; prepare them separately")
    return flags.pop()


def local_files(path: str) -> list[str]:
    """The files at or under a local path, sorted, from directory entries (no stat per file:
    fsspec's `find` is slow on many files), through linked folders as the readers go (a class
    folder may be a link), each real folder once (a link cycle ends), regular files only
    (digesting a FIFO would block)."""
    if not os.path.isdir(path):
        return [path]
    files, seen, todo = [], set(), [path]
    while todo:
        folder = todo.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue
        seen.add(real)
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir():
                    todo.append(entry.path)
                elif entry.is_file():
                    files.append(entry.path)
    return sorted(files)


def fingerprint_inputs(source: SourceConfig, index_dir: str | Path | None = None) -> dict[str, Any]:
    """Content fingerprint of a source: every file's digest (by its name relative to its input)
    plus how it is read. Moving the data elsewhere keeps the fingerprint. With `index_dir`, local
    files whose stat is unchanged since an earlier call are not read again (see StatIndex)."""
    inputs, label_names = resolve_inputs(source)
    index = StatIndex(index_dir, json.dumps([item.path for item in inputs]))
    parts = []
    for item in inputs:
        local = "file" in item.fs.protocol or "local" in item.fs.protocol
        if local:
            files = local_files(item.path)
        else:
            files = sorted(item.fs.find(item.path)) if item.fs.isdir(item.path) else [item.path]
        cut = len(posixpath.dirname(item.path.rstrip("/")))  # names relative to the input's parent
        digest = index.digest if local else functools.partial(url_digest, item.fs)
        parts.append(
            {
                "spec": item.spec.model_dump(exclude={"path"}),
                "files": {f[cut:].lstrip("/"): digest(f) for f in files},
            }
        )
    index.save()
    return {"inputs": parts, "label_names": label_names}
