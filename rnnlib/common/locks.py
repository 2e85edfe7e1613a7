"""Advisory file locks (fcntl): the operating system releases them when their holder exits, even
when it is killed, so a crash never leaves a lock behind."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def file_lock(path: str | Path, *, shared: bool = False, wait: bool = True) -> Iterator[bool]:
    """Hold a lock on `path` (created if needed) for the block. Yields False at once, without the
    lock, when `wait` is False and another process holds it incompatibly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fh, mode if wait else mode | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
