"""One Dask client per flow run, started on first use: a run served from cache starts no cluster."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING

from rnnlib.common.cluster import dask_client
from rnnlib.config import DaskConfig

if TYPE_CHECKING:
    from distributed import Client

_lock = threading.Lock()
_stack = ExitStack()
_clients: dict[str, Client] = {}
_starting: list[threading.Thread] = []  # started in the background, perhaps not yet in _clients


def get_client(cfg: DaskConfig) -> Client:
    key = cfg.model_dump_json()
    with _lock:
        if key not in _clients:
            logging.getLogger("distributed").setLevel(logging.WARNING)  # Prefect's config is chatty
            _clients[key] = _stack.enter_context(dask_client(cfg))
        return _clients[key]


def start_client(cfg: DaskConfig) -> None:
    """Start the client in the background, for a run known to have work for it: the cluster
    starts while Prefect starts the flow run and the stages compute their keys."""
    thread = threading.Thread(target=get_client, args=(cfg,), name="dask-start", daemon=True)
    thread.start()
    _starting.append(thread)


def connector(cfg: DaskConfig) -> Callable[[], Client]:
    """What a library stage calls for its client, only if it has work to do."""
    return lambda: get_client(cfg)


def close_clients() -> None:
    """Close every client and the clusters they started, waiting first for one still starting
    (a run that failed early would otherwise leave it running)."""
    while _starting:
        _starting.pop().join()
    with _lock:
        _clients.clear()
        _stack.close()
