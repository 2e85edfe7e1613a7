"""Content fingerprints: what cache keys and artifact versions are made of."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import fsspec

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the whole rnnlib package


def digest_bytes(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def digest_json(value: Any) -> str:
    """Digest of a JSON-able value, independent of dict ordering."""
    return digest_bytes(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())


def file_digest(path: str | Path, algorithm: str = "blake2b") -> str:
    """Digest of a local file's bytes, read in chunks (files may be large)."""
    with open(path, "rb") as fh:
        if algorithm == "blake2b":
            return hashlib.file_digest(fh, lambda: hashlib.blake2b(digest_size=16)).hexdigest()
        return hashlib.file_digest(fh, algorithm).hexdigest()


def url_digest(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Content digest for local files; the filesystem's own checksum (ETag, ...) elsewhere."""
    if "file" in fs.protocol or "local" in fs.protocol:
        return file_digest(path)
    return str(fs.checksum(path))


@lru_cache(maxsize=1)
def code_version() -> str:
    """Digest of the library's source: any code change invalidates cached stage outputs."""
    sources = sorted(PACKAGE_DIR.rglob("*.py"))
    return digest_json({str(p.relative_to(PACKAGE_DIR)): file_digest(p) for p in sources})
