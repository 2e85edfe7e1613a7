"""Dask cluster access: an existing scheduler when an address is given, else a LocalCluster."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rnnlib.config import DaskConfig

if TYPE_CHECKING:  # imported when a cluster is needed: a run served from cache never pays for it
    from distributed import Client

# Dask sets MALLOC_TRIM_THRESHOLD_ in its workers, to hand freed memory back to the OS in long
# lived clusters. Setting it also turns off glibc's adaptive mmap threshold, so every large
# buffer is mapped afresh and faulted in page by page, which slows every stage (README,
# benchmarks). The workers of a run's own LocalCluster live as long as the run and keep glibc's
# defaults.
LOCAL_WORKER_ENVIRON = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


@contextmanager
def dask_client(cfg: DaskConfig) -> Iterator[Client]:
    """A client for the configured cluster; a LocalCluster it starts is shut down on exit. The
    client is not entered as a context manager: that would make it the "current" client of the
    creating thread's context only, and closing it from another (a flow closing what a task
    thread opened) would fail. A LocalCluster listens on 127.0.0.1 only, dashboard included."""
    import dask
    from distributed import Client, LocalCluster

    if cfg.address:
        client = Client(cfg.address, set_as_default=False)
        try:
            yield client
        finally:
            client.close()
        return
    cores = cfg.n_workers or os.cpu_count() or 1
    with (
        dask.config.set(LOCAL_WORKER_ENVIRON),
        LocalCluster(
            n_workers=cores if cfg.processes else 1,
            threads_per_worker=1 if cfg.processes else cores,
            processes=cfg.processes,
            **({"host": "127.0.0.1"} if cfg.processes else {}),  # threads only: in-process transport
            dashboard_address="127.0.0.1:0",  # any free port: several clusters may run side by side
            silence_logs=logging.ERROR,
        ) as cluster,
    ):
        client = Client(cluster, set_as_default=False)
        try:
            yield client
        finally:
            client.close()


def map_partitions(
    client: Client | None, fn: Callable[..., Any], *iterables: Sequence[Any], **kwargs: Any
) -> list[Any]:
    """Run `fn` once per partition, on the cluster (or in this process without a client), and
    return the results in order."""
    if client is None:
        return [fn(*args, **kwargs) for args in zip(*iterables)]
    return client.gather(client.map(fn, *iterables, pure=False, **kwargs))


def map_reduce(
    client: Client | None,
    fn: Callable[..., Any],
    items: Sequence[Any],
    combine: Callable[..., Any],
    fan_in: int = 8,
    **kwargs: Any,
) -> Any:
    """`combine(*map(fn, items))` as a tree reduction on the cluster: partial results stay on
    the workers and only the final one reaches the caller."""
    if client is None:
        return combine(*(fn(item, **kwargs) for item in items))
    futures = client.map(fn, items, pure=False, **kwargs)
    while len(futures) > 1:
        futures = [client.submit(combine, *futures[i : i + fan_in], pure=False) for i in range(0, len(futures), fan_in)]
    return futures[0].result()
