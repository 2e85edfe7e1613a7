"""Training batches streamed from the tensor shards: never the whole split in memory.

Pools of `pool_batches * batch_size` rows are drawn from many shards at once (in proportion to
what each has left); each pool is sorted by length and cut into batches padded only to their own
maximum, and the batches of a pool are shuffled. Distributed ranks read disjoint shards.
Everything is seeded by (seed, epoch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from rnnlib.prepare.tensorize import SplitTensors

OPEN_SHARDS = 64  # readers of 1,024 rows each: a few MB


@dataclass(frozen=True)
class Batch:
    ids: torch.Tensor  # (batch, max length in batch), 0 = <PAD>
    lengths: torch.Tensor  # (batch,)
    labels: torch.Tensor  # (batch,)

    def to(self, device: torch.device) -> Batch:
        """On GPU: pinned memory and a non-blocking copy, so the next batch overlaps compute."""
        if device.type != "cuda":
            return self
        return Batch(*(t.pin_memory().to(device, non_blocking=True) for t in (self.ids, self.lengths, self.labels)))


def shard_files(*split_dirs: str | Path) -> list[Path]:
    """The shards of one or more splits (a refit trains on train and validation together)."""
    return [Path(split_dir) / s.file for split_dir in split_dirs for s in SplitTensors.read(split_dir).shards]


def collate(ids: pa.ListArray, labels: np.ndarray) -> Batch:
    """Pad a list<int32> array to its own longest row, vectorised."""
    lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(ids).to_numpy(zero_copy_only=False)
    padded = np.zeros((len(lengths), int(lengths.max(initial=1))), dtype=np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    padded[rows, cols] = flat
    return Batch(torch.from_numpy(padded), torch.from_numpy(lengths), torch.from_numpy(labels))


class _ShardReader:
    """Reads a shard a few rows at a time, as asked."""

    def __init__(self, path: Path, chunk_rows: int = 1024) -> None:
        parquet = pq.ParquetFile(path)
        self.remaining = parquet.metadata.num_rows
        self.batches = parquet.iter_batches(batch_size=chunk_rows, columns=["ids", "length", "label"])
        self.buffer = pa.table(
            {
                "ids": pa.array([], pa.list_(pa.int32())),
                "length": pa.array([], pa.int32()),
                "label": pa.array([], pa.int64()),
            }
        )

    def take(self, n: int) -> pa.Table:
        while self.buffer.num_rows < n:
            batch = next(self.batches, None)
            if batch is None:
                break
            self.buffer = pa.concat_tables([self.buffer, pa.Table.from_batches([batch]).cast(self.buffer.schema)])
        out, self.buffer = self.buffer.slice(0, n), self.buffer.slice(n)
        self.remaining -= out.num_rows
        return out


class ShardBatches:
    """Iterable of length-bucketed batches over a split's shards (a rank's share of them); a
    sequence of split folders reads them all as one."""

    def __init__(
        self,
        split_dir: str | Path | Sequence[str | Path],
        batch_size: int,
        pool_batches: int = 50,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        dirs = [split_dir] if isinstance(split_dir, (str, Path)) else split_dir
        self.files = shard_files(*dirs)[rank::world_size]
        self.batch_size, self.pool_rows = batch_size, batch_size * pool_batches
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _pools(self, rng: np.random.Generator) -> Iterator[pa.Table]:
        """Pools drawn from up to `OPEN_SHARDS` shards at once, from each in proportion to what it
        has left: a shard holds one source partition's rows (often a few classes only), so a pool
        from one shard at a time would not be a sample of the split."""
        waiting = [self.files[i] for i in rng.permutation(len(self.files))] if self.shuffle else list(self.files)
        active: list[_ShardReader] = []
        while waiting or active:
            while waiting and len(active) < OPEN_SHARDS:
                active.append(_ShardReader(waiting.pop(0)))
            left = np.array([r.remaining for r in active])
            quotas = np.floor(self.pool_rows * left / left.sum()).astype(int) if left.sum() > self.pool_rows else left
            quotas = np.maximum(quotas, np.minimum(left, 1))  # progress on every shard
            pieces = [reader.take(int(q)) for reader, q in zip(active, quotas)]
            active = [r for r in active if r.remaining > 0]
            yield pa.concat_tables([p for p in pieces if p.num_rows])

    def __iter__(self) -> Iterator[Batch]:
        rng = np.random.default_rng([self.seed, self.epoch])
        for pool in self._pools(rng):
            lengths = pool["length"].to_numpy()
            order = np.arange(pool.num_rows)
            if self.shuffle:  # random order among equal lengths
                order = rng.permutation(pool.num_rows)
            order = order[np.argsort(lengths[order], kind="stable")]
            starts = list(range(0, pool.num_rows, self.batch_size))
            if self.shuffle:
                starts = [starts[i] for i in rng.permutation(len(starts))]
            for start in starts:
                take = pa.array(order[start : start + self.batch_size])
                part = pool.take(take)
                yield collate(part["ids"].combine_chunks(), part["label"].to_numpy().astype(np.int64))
