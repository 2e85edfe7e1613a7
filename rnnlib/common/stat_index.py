"""Content digests of local files, remembered by their stat so an unchanged file is not read again.

An entry maps a file to (size, mtime, ctime, inode) and the digest of its bytes. It is trusted
only when the file's stat is the same as then *and* the file had last changed well before the
entry was taken: a file rewritten within the filesystem's timestamp granularity of being hashed
(same size, same second) could otherwise keep a stale digest, so such an entry is re-hashed next
time (the "racily clean" rule of git's index). The index is a cache: losing it costs one re-read.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rnnlib.common.fingerprint import digest_bytes, file_digest
from rnnlib.common.storage import write_json

STAT_INDEX = ".stat-index"  # the folder an index is kept in, under a work or output dir

# Coarsest timestamp granularity trusted (FAT and some network filesystems keep 2 s).
RACY_MARGIN_NS = 2_000_000_000

Entry = list[int | str]  # size, mtime_ns, ctime_ns, inode, checked_ns, digest


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class StatIndex:
    """Digests of one source's files, kept as `index_dir/<digest of name>.json` between runs
    (no `index_dir`: nothing is kept). Saving keeps only the files looked up since loading."""

    def __init__(self, index_dir: str | Path | None, name: str) -> None:
        self.file = Path(index_dir) / f"{digest_bytes(name.encode())}.json" if index_dir else None
        self.entries: dict[str, Entry] = {}
        self.seen: set[str] = set()
        self.hashed = 0  # files read since loading
        if self.file is not None and self.file.is_file():
            try:
                self.entries = json.loads(self.file.read_text(encoding="utf-8"))
            except ValueError:  # a damaged index is only a cold cache
                self.entries = {}
        self._changed = False

    def digest(self, path: str) -> str:
        """The digest of `path`'s bytes: from the index when its stat vouches for it, else read."""
        st = os.stat(path)
        self.seen.add(path)
        entry = self.entries.get(path)
        if entry is not None and entry[:4] == _stat_key(st):
            if st.st_mtime_ns < int(entry[4]) - RACY_MARGIN_NS:
                return str(entry[5])
        checked_ns = time.time_ns()
        digest = file_digest(path)
        self.hashed += 1
        if _stat_key(os.stat(path)) == _stat_key(st):  # not written while being read
            self.entries[path] = [*_stat_key(st), checked_ns, digest]
            self._changed = True
        return digest

    def save(self) -> None:
        if self.file is None or not (self._changed or self.seen != self.entries.keys()):
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.file, {p: e for p, e in self.entries.items() if p in self.seen}, compact=True)
        self._changed = False
