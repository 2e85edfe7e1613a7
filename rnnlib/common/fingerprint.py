"""Content fingerprints: what cache keys and artifact versions are made of."""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import sys
import threading
from collections.abc import Iterator
from functools import cache, lru_cache
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


def module_file(name: str) -> Path | None:
    """The source file of an rnnlib module (a package: its __init__.py), None if not one."""
    parts = name.split(".")
    if parts[0] != "rnnlib":
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _executed(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of `tree` but those under `if TYPE_CHECKING:`, which never run."""
    for node in ast.iter_child_nodes(tree):
        test = node.test if isinstance(node, ast.If) else None
        if test is not None and "TYPE_CHECKING" in ast.unparse(test):
            yield from (n for child in node.orelse for n in (child, *_executed(child)))
            continue
        yield node
        yield from _executed(node)


# CPython 3.11's `ast` conversion keeps its recursion depth in shared state: two threads parsing
# at once (stages keyed side by side in a flow's task threads) fail with "AST constructor recursion
# depth mismatch" (python/cpython#106905), so parsing is one thread at a time.
_PARSING = threading.Lock()


@cache
def _imported_names(path: Path) -> frozenset[str]:
    """Every module name a source file imports anywhere (function-level imports too), with the
    packages that importing them runs."""
    found = set()
    with _PARSING:
        nodes = list(_executed(ast.parse(path.read_text(encoding="utf-8"))))
    for node in nodes:
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            candidates = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for candidate in candidates:
            parts = candidate.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(found)


def _imports(name: str, path: Path) -> set[str]:
    """The rnnlib modules `name` imports."""
    return {m for m in _imported_names(path) if module_file(m) is not None and m != name}


@lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def library_versions(files: set[Path]) -> dict[str, str]:
    """The installed version of every third-party package these files import (numpy, pyarrow,
    nltk, torch, ...): an upgrade can change what the code computes, so it is part of a key."""
    names = {m.split(".")[0] for f in files for m in _imported_names(f)}
    names -= {"rnnlib", "__future__", *sys.stdlib_module_names}
    versions = {}
    for name in sorted(names):
        try:  # most packages are named as they are imported
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:  # yaml is PyYAML's, sklearn scikit-learn's
            versions.update({dist: importlib.metadata.version(dist) for dist in _distributions().get(name, [])})
    return versions


@cache
def code_closure(root: str) -> frozenset[str]:
    """`root` and every rnnlib module it imports, directly or not: the code it can execute."""
    seen, todo = set(), [root]
    while todo:
        name = todo.pop()
        path = module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        todo.extend(_imports(name, path))
    return frozenset(seen)


@cache
def code_version(*roots: str, own: str | None = None) -> str:
    """Digest of the source a computation runs: the modules `roots` name and all they import
    (found from the source, not kept by hand), plus the module `own` alone (where the stage itself
    is written), so an edit re-runs only what it can change. No roots: the whole library."""
    if roots or own:
        files = {module_file(m) for root in roots for m in code_closure(root)}
        files |= {module_file(own)} - {None} if own else set()
    else:
        files = set(PACKAGE_DIR.rglob("*.py"))
    return digest_json(
        {
            "source": {str(p.relative_to(PACKAGE_DIR)): file_digest(p) for p in sorted(files)},
            "libraries": library_versions(files),
        }
    )
