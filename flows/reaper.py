"""No orphans: a command killed outright (SIGKILL, OOM killer) cannot stop what it started: the
temporary Prefect server, a LocalCluster's scheduler and workers. A small watchdog process,
forked before any of them start, keeps a list of the command's descendants and, the moment the
command is gone (the pipe between them closes, however it died), stops the ones still running."""

from __future__ import annotations

import os
import select
import signal

GRACE_SECONDS = 5.0


def start_reaper(poll_seconds: float = 0.5) -> int:
    """Fork the watchdog of this process; returns its pid. Call before starting threads."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(read_end)  # this process holds the write end until it dies
        return pid
    os.close(write_end)
    try:
        _watch(os.getppid(), read_end, poll_seconds)
    finally:
        os._exit(0)


def _watch(parent_pid: int, read_end: int, poll_seconds: float) -> None:
    import psutil

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the command's to handle
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # hold none of the command's streams open after it ends
        os.dup2(devnull, fd)
    me = os.getpid()
    parent = psutil.Process(parent_pid)
    known: dict[int, psutil.Process] = {}
    while not select.select([read_end], [], [], poll_seconds)[0]:
        try:
            for child in parent.children(recursive=True):
                if child.pid != me:
                    known.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            break
    alive = [p for p in known.values() if p.is_running()]  # same pid and start time as recorded
    for process in alive:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, still = psutil.wait_procs(alive, timeout=GRACE_SECONDS)
    for process in still:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
