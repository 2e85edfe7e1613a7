"""Dask cluster access: an existing scheduler when an address is given, else a LocalCluster."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from distributed import Client, LocalCluster

from rnnlib.config import DaskConfig


@contextmanager
def dask_client(cfg: DaskConfig) -> Iterator[Client]:
    """A client for the configured cluster; a LocalCluster it starts is shut down on exit."""
    if cfg.address:
        with Client(cfg.address) as client:
            yield client
        return
    cores = cfg.n_workers or os.cpu_count() or 1
    with LocalCluster(
        n_workers=cores if cfg.processes else 1,
        threads_per_worker=1 if cfg.processes else cores,
        processes=cfg.processes,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    ) as cluster, Client(cluster) as client:
        yield client


def partitions(stage_dir: str | Path) -> list[Path]:
    """The Parquet partitions of a stage output, in order."""
    return sorted(Path(stage_dir).glob("part-*.parquet"))


def map_partitions(
    client: Client, fn: Callable[..., Any], *iterables: Sequence[Any], **kwargs: Any
) -> list[Any]:
    """Run `fn` once per partition on the cluster and return the results in order."""
    futures = client.map(fn, *iterables, pure=False, **kwargs)
    return client.gather(futures)
