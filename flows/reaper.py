"""No orphans: a command killed outright (SIGKILL, OOM killer) cannot stop what it started: the
temporary Prefect server, a LocalCluster's scheduler and workers, scikit-learn's worker pools. A
small watchdog process, forked before any of them start, keeps a list of the command's
descendants and, the moment the command is gone (the pipe between them closes, however it died),
stops the ones still running. Polling alone would miss a process started just before the end,
or one that detached itself from the tree; so the command also marks its environment with a token
every descendant inherits, and the watchdog stops whatever carries it."""

from __future__ import annotations

import os
import select
import signal
import uuid

GRACE_SECONDS = 5.0
TOKEN = "RNNLIB_COMMAND_TOKEN"


def start_reaper(poll_seconds: float = 0.5) -> int:
    """Fork the watchdog of this process; returns its pid. Call before starting threads."""
    os.environ[TOKEN] = uuid.uuid4().hex  # inherited by every process started from now on
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(read_end)  # this process holds the write end until it dies
        return pid
    os.close(write_end)
    try:
        _watch(os.getppid(), read_end, poll_seconds, os.environ[TOKEN])
    finally:
        os._exit(0)


def _watch(parent_pid: int, read_end: int, poll_seconds: float, token: str) -> None:
    import psutil

    for sig in (signal.SIGINT, signal.SIGTERM):  # the command's to handle; this one ends after it
        signal.signal(sig, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # hold none of the command's streams open after it ends
        os.dup2(devnull, fd)
    me = os.getpid()
    known: dict[int, psutil.Process] = {}
    try:
        parent = psutil.Process(parent_pid)
        while not select.select([read_end], [], [], poll_seconds)[0]:
            for child in parent.children(recursive=True):
                if child.pid != me:
                    known.setdefault(child.pid, child)
    except psutil.NoSuchProcess:  # the command is gone, maybe before this process could look
        pass
    for _ in range(3):  # a process being stopped may start another (a pool replacing a worker)
        alive = [p for p in known.values() if p.is_running()] + _carrying(token, me, set(known))
        if not alive:
            return
        _stop(alive)
        known.update((p.pid, p) for p in alive)


def _carrying(token: str, me: int, skip: set[int]) -> list:
    """Processes whose environment holds the command's token."""
    import psutil

    found = []
    for process in psutil.process_iter():
        if process.pid in skip or process.pid == me:
            continue
        try:
            if process.environ().get(TOKEN) == token:
                found.append(process)
        except psutil.Error:  # gone, a zombie, or not ours to read
            continue
    return found


def _stop(processes: list) -> None:
    import psutil

    for process in processes:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, still = psutil.wait_procs(processes, timeout=GRACE_SECONDS)
    for process in still:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
