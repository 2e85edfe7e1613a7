"""Watch a folder and emit one Prefect event per new file (`rnnlib.file.arrived`, the file's path
in its payload); the `score-new-file/on-new-file` deployment's trigger turns each into a scoring
run for that file.

A file is announced once its size has stayed the same between two polls, so a file still being
copied in is not scored half-written; names starting with "." are ignored (write to a dot-name,
then rename). Announced files are remembered in a state file, so a restarted watcher does not
announce them again.

Usage: python -m rnnlib_deployments.watcher DIR [--pattern '*.jsonl'] [--interval 2] [--state FILE]
(PREFECT_API_URL must point at the Prefect server.)
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path

from rnnlib.common.storage import read_json, write_json

FILE_ARRIVED = "rnnlib.file.arrived"
RESOURCE_PREFIX = "rnnlib.file."
log = logging.getLogger("rnnlib.watcher")


class Watcher:
    """Finds files under a folder that are new, complete (size stable) and not yet announced."""

    def __init__(self, folder: Path, pattern: str, state_file: Path) -> None:
        self.folder, self.pattern, self.state_file = folder.resolve(), pattern, state_file
        self.announced: set[str] = set(read_json(state_file)) if state_file.is_file() else set()
        self.sizes: dict[str, int] = {}

    def poll(self) -> list[Path]:
        """Files whose size did not change since the previous poll and were never announced."""
        seen = {str(p): p.stat().st_size for p in sorted(self.folder.rglob(self.pattern))
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(self.folder).parts)}
        ready = [Path(p) for p, size in seen.items() if p not in self.announced and self.sizes.get(p) == size]
        self.sizes = seen
        return ready

    def mark(self, path: Path) -> None:
        self.announced.add(str(path))
        write_json(self.state_file, sorted(self.announced))


def announce(path: Path) -> None:
    from prefect.events import emit_event

    emit_event(event=FILE_ARRIVED, resource={"prefect.resource.id": f"{RESOURCE_PREFIX}{path}",
                                             "prefect.resource.name": path.name},
               payload={"path": str(path), "size": path.stat().st_size})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--pattern", default="*", help="file glob under the folder (recursive)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    parser.add_argument("--state", type=Path, help="announced files (default: FOLDER/.rnnlib-watcher.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from prefect.events.worker import EventsWorker

    watcher = Watcher(args.folder, args.pattern, args.state or args.folder / ".rnnlib-watcher.json")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log.info("watching %s for %s", watcher.folder, args.pattern)
    try:
        while True:
            for path in watcher.poll():
                announce(path)
                EventsWorker.drain_all()  # sent before it is marked as announced
                watcher.mark(path)
                log.info("announced %s", path)
            time.sleep(args.interval)
    finally:
        EventsWorker.drain_all()


if __name__ == "__main__":
    sys.exit(main())
