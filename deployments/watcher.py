"""Watch a folder and announce new files to Prefect: one `rnnlib.files.arrived` event per poll
for the files found complete (at most `--batch` per event; each file's path, size and modification
time in its payload). The `score-new-files/on-arrival` deployment's trigger turns each event into
one scoring run for its files, so a burst of many small files is a few runs, not one per file.

- A file is announced once its size and modification time have stayed the same between two polls
  and it has not been written for `--quiet` seconds, so a file still being copied in, or whose
  writer pauses, is not scored half-written. A writer that pauses longer than that still gets
  its partial file scored (into an output of its own): names starting with "." are ignored, so
  the sure way is to write to a dot-name, then rename.
- A FIFO, socket or device is refused (logged, never announced): its reader would block.
- A file is known by its path, size and modification time: a file replaced under the same name is
  announced again (and scored into an output of its own).
- Symbolic links are refused (logged, never announced): a link could lead the scoring run out of
  the watched folder. Links to folders are not followed.
- A file counts as announced only once the Prefect server has the event (it is read back);
  announced files are remembered in a state file, so a restarted watcher announces no file twice
  and retries every file whose event was not confirmed.

Usage: python -m rnnlib_deployments.watcher DIR [--pattern '*.jsonl'] [--interval 2] [--quiet 10]
           [--batch 100] [--state FILE]
(PREFECT_API_URL must point at the Prefect server.)
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import os
import signal
import stat
import sys
import time
from pathlib import Path
from typing import NamedTuple

from rnnlib.common.fingerprint import digest_json
from rnnlib.common.storage import read_json, write_json

FILES_ARRIVED = "rnnlib.files.arrived"
RESOURCE_PREFIX = "rnnlib.arrivals."
log = logging.getLogger("rnnlib.watcher")


class Arrival(NamedTuple):
    """A file as it was when found complete: a replaced file is a new arrival."""

    path: Path
    size: int
    mtime_ns: int


class Watcher:
    """Finds files under a folder that are new, complete (size stable), not links, and not yet
    announced."""

    def __init__(self, folder: Path, pattern: str, state_file: Path, quiet_seconds: float = 0.0) -> None:
        self.folder, self.pattern, self.state_file = folder.resolve(), pattern, state_file
        self.quiet_ns = int(quiet_seconds * 1e9)
        saved = read_json(state_file) if state_file.is_file() else []
        self.announced = {Arrival(Path(p), s, m) for p, s, m in (entry for entry in saved if isinstance(entry, list))}
        self.last_poll: dict[Path, tuple[int, int]] = {}
        self.refused: set[Path] = set()

    def _files(self) -> dict[Path, tuple[int, int]]:
        found = {}
        for root, folders, names in os.walk(self.folder):  # links to folders are not followed
            folders[:] = [f for f in folders if not f.startswith(".")]
            for name in names:
                path = Path(root) / name
                if name.startswith(".") or not fnmatch.fnmatch(name, self.pattern):
                    continue
                if path.is_symlink():
                    if path not in self.refused:
                        log.warning("refused %s: a symbolic link (copy or move the file in instead)", path)
                        self.refused.add(path)
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:  # removed since listed
                    continue
                if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block its reader forever
                    if path not in self.refused:
                        log.warning("refused %s: not a regular file", path)
                        self.refused.add(path)
                    continue
                found[path] = (st.st_size, st.st_mtime_ns)
        return found

    def poll(self) -> list[Arrival]:
        """Files unchanged since the previous poll and not yet announced as they are now."""
        seen = self._files()
        settled = time.time_ns() - self.quiet_ns
        ready = [
            Arrival(p, size, mtime)
            for p, (size, mtime) in sorted(seen.items())
            if self.last_poll.get(p) == (size, mtime)
            and mtime <= settled
            and Arrival(p, size, mtime) not in self.announced
        ]
        self.last_poll = seen
        return ready

    def mark(self, arrivals: list[Arrival]) -> None:
        self.announced.update(arrivals)
        write_json(self.state_file, sorted([str(a.path), a.size, a.mtime_ns] for a in self.announced))


def batches(arrivals: list[Arrival], size: int) -> list[list[Arrival]]:
    """The arrivals in announcement order, at most `size` to an event (and so to a scoring run)."""
    return [arrivals[i : i + size] for i in range(0, len(arrivals), size)]


def announce(arrivals: list[Arrival], confirm_seconds: float = 30.0) -> bool:
    """Emit one event for the arrivals and wait until the server has it; False when it does not
    appear (the files are then offered again on the next poll)."""
    from prefect.client.orchestration import get_client
    from prefect.events import emit_event
    from prefect.events.filters import EventFilter, EventIDFilter
    from prefect.events.worker import EventsWorker

    files = [{"path": str(a.path), "size": a.size, "mtime_ns": a.mtime_ns} for a in arrivals]
    event = emit_event(
        event=FILES_ARRIVED,
        resource={
            "prefect.resource.id": f"{RESOURCE_PREFIX}{digest_json(files)[:16]}",
            "prefect.resource.name": f"{len(files)} file(s), first {arrivals[0].path.name}",
        },
        payload={"files": files},
    )
    if event is None:
        return False
    EventsWorker.drain_all()
    deadline = time.monotonic() + confirm_seconds
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            try:
                page = client.read_events(EventFilter(id=EventIDFilter(id=[event.id])), limit=1)
                if page.events:
                    return True
            except Exception as exc:  # noqa: BLE001 - server unreachable: not confirmed yet
                log.warning("could not confirm the event for %d file(s) yet: %s", len(arrivals), exc)
            time.sleep(0.5)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--pattern", default="*", help="file name glob, at any depth under the folder")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    parser.add_argument(
        "--quiet", type=float, default=10.0, help="seconds a file must have gone unwritten before it is announced"
    )
    parser.add_argument("--batch", type=int, default=100, help="most files announced in one event (one scoring run)")
    parser.add_argument("--state", type=Path, help="announced files (default: FOLDER/.rnnlib-watcher.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from prefect.events.worker import EventsWorker

    watcher = Watcher(args.folder, args.pattern, args.state or args.folder / ".rnnlib-watcher.json", args.quiet)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log.info("watching %s for %s", watcher.folder, args.pattern)
    try:
        while True:
            for batch in batches(watcher.poll(), args.batch):
                names = ", ".join(a.path.name for a in batch)
                if announce(batch):
                    watcher.mark(batch)
                    log.info("announced %s", names)
                else:
                    log.warning("the event for %s was not confirmed by the server; offered again", names)
            time.sleep(args.interval)
    finally:
        EventsWorker.drain_all()


if __name__ == "__main__":
    sys.exit(main())
