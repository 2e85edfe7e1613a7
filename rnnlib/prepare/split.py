"""Stratified, deterministic train/validation/test split that never gathers the text.

Pass 1 counts kept rows per (partition, pool, label), where the pool is the row's predefined
split or none. The driver turns these small counts into exact per-partition quotas: each
(pool, label) group gets its fractions to within one row overall (largest remainder), spread over
partitions in proportion to their size. Pass 2 ranks each partition's rows of a group by a
seeded hash of their id and hands out the quotas in that order.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from rnnlib.common.cluster import map_partitions
from rnnlib.common.storage import MANIFEST, building, partitions, write_json
from rnnlib.config import SPLITS, SplitConfig

if TYPE_CHECKING:
    from distributed import Client

UNLABELLED_SPLIT = "all"  # unlabelled corpora (scoring input) are kept whole
UNUSED_SPLIT = "unused"  # rows left out by `split.sample`
ASSIGNED = (*SPLITS, UNUSED_SPLIT)
NO_POOL = ""


def pool_fractions(pool: str, cfg: SplitConfig, predefined: set[str]) -> np.ndarray:
    """Target fractions (train, val, test, unused) for the rows of one pool."""
    if pool == NO_POOL:
        return np.array([cfg.train, cfg.val, cfg.test, 0.0])
    if pool == "train" and "val" not in predefined and cfg.train + cfg.val > 0:
        return np.array([cfg.train, cfg.val, 0.0, 0.0]) / (cfg.train + cfg.val)  # carve val from train
    return np.array([float(pool == s) for s in ASSIGNED])


def sampled(
    fractions: dict[tuple[str, str], np.ndarray], sizes: dict[tuple[str, str], int], sample: int | None
) -> dict[tuple[str, str], np.ndarray]:
    """The groups' fractions with training and validation scaled down alike, so that about
    `sample` rows of them are used (each group in proportion: stratified); the rest go unused."""
    fit_rows = sum(sizes[g] * f[:2].sum() for g, f in fractions.items())
    if sample is None or sample >= fit_rows:
        return fractions
    keep = sample / fit_rows
    return {g: np.array([f[0] * keep, f[1] * keep, f[2], f[:2].sum() * (1 - keep)]) for g, f in fractions.items()}


def largest_remainder(total: int, fractions: np.ndarray) -> np.ndarray:
    """Integers summing to `total`, each within one of total * fraction."""
    ideal = total * fractions
    counts = np.floor(ideal).astype(np.int64)
    order = np.argsort(-(ideal - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def allocate(partition_counts: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """(P,) partition sizes -> (P, S) quotas whose rows sum to the sizes and whose columns sum
    to the group's largest-remainder targets."""
    targets = largest_remainder(int(partition_counts.sum()), fractions)
    ideal = partition_counts[:, None] * fractions[None, :]
    quotas = np.floor(ideal).astype(np.int64)
    row_left = partition_counts - quotas.sum(axis=1)
    col_left = targets - quotas.sum(axis=0)
    for p in np.argsort(-(ideal - quotas).max(axis=1), kind="stable"):
        for s in np.argsort(-(ideal[p] - quotas[p]), kind="stable"):
            give = min(row_left[p], col_left[s])
            quotas[p, s] += give
            row_left[p] -= give
            col_left[s] -= give
    return quotas  # every row is filled: what is left of the columns equals what is left of the rows


def _kept_groups(table: pa.Table) -> pd.DataFrame:
    frame = table.select(["id", "label", "split", "reject"]).to_pandas()
    frame = frame[frame["reject"].isna()]
    frame["pool"] = frame["split"].fillna(NO_POOL)
    frame["label"] = frame["label"].fillna("")
    return frame


def count_partition(in_file: Path) -> dict[tuple[str, str], int]:
    frame = _kept_groups(pq.read_table(in_file, columns=["id", "label", "split", "reject"]))
    return {k: int(v) for k, v in frame.groupby(["pool", "label"]).size().items()}


def _hash_key(seed: int) -> str:
    return hashlib.md5(str(seed).encode()).hexdigest()[:16]


def assign_partition(
    in_file: Path,
    out_file: Path,
    quotas: dict[tuple[str, str], list[int]],
    seed: int,
    labelled: bool,
) -> dict[str, dict[str, int]]:
    """Write the partition's split assignment (`id`, `split`, row-aligned with the tokens
    partition of the same name); return kept rows per (split, label)."""
    table = pq.read_table(in_file, columns=["id", "label", "split", "reject"])
    split = np.full(table.num_rows, None, dtype=object)
    frame = _kept_groups(table)
    if labelled:
        frame["rank"] = pd.util.hash_pandas_object(frame["id"], index=False, hash_key=_hash_key(seed))
        frame = frame.sort_values(["pool", "label", "rank"], kind="stable")
        groups = frame.groupby(["pool", "label"])  # a few groups: bounds per group, not per row
        bounds = np.array([np.cumsum(quotas[key]) for key in groups.size().index], np.int64)
        row_bounds = bounds.reshape(-1, len(ASSIGNED))[groups.ngroup().to_numpy()]
        chosen = (groups.cumcount().to_numpy()[:, None] >= row_bounds).sum(axis=1)
        split[frame.index.to_numpy()] = np.array(ASSIGNED, dtype=object)[chosen]
    else:
        split[frame.index.to_numpy()] = UNLABELLED_SPLIT
    assignment = pa.table({"id": table["id"], "split": pa.array(split, pa.string())})
    pq.write_table(assignment, out_file)
    kept = pa.table({"split": assignment["split"], "label": table["label"]}).filter(pc.is_valid(assignment["split"]))
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for item in kept.group_by(["split", "label"]).aggregate([([], "count_all")]).to_pylist():
        counts[item["split"]][item["label"] or ""] = item["count_all"]
    return dict(counts)


def with_split(tokens_file: Path, split_dir: str | Path, **read_options: Any) -> pa.Table:
    """A tokens partition with its final split (from the split stage's aligned assignment)."""
    table = pq.read_table(tokens_file, **read_options)
    assigned = pq.read_table(Path(split_dir) / tokens_file.name, columns=["split"])["split"]
    if "split" in table.column_names:
        return table.set_column(table.schema.get_field_index("split"), "split", assigned)
    return table.append_column("split", assigned)


class SplitRows(BaseModel):
    rows: int
    class_counts: dict[str, int]


class SplitManifest(BaseModel):
    """The split stage's manifest: each split's rows and classes."""

    splits: dict[str, SplitRows]
    predefined: list[str]  # splits the input named itself
    parts: list[str]
    kept: int


def split(
    in_dir: str | Path,
    *,
    out_dir: str | Path,
    cfg: SplitConfig,
    labelled: bool,
    client: Client | None = None,
) -> SplitManifest:
    """Assign every kept row of the tokens partitions to train/val/test (`unused` when left out
    by `cfg.sample`; `all` when unlabelled); writes one row-aligned `id, split` partition per tokens partition."""
    files = partitions(in_dir)
    per_partition = map_partitions(client, count_partition, files)
    groups = sorted({g for counts in per_partition for g in counts})
    predefined = {pool for pool, _ in groups if pool != NO_POOL}
    quotas: list[dict[tuple[str, str], list[int]]] = [{} for _ in files]
    sizes = {g: np.array([counts.get(g, 0) for counts in per_partition]) for g in groups}
    fractions = sampled(
        {g: pool_fractions(g[0], cfg, predefined) for g in groups},
        {g: int(s.sum()) for g, s in sizes.items()},
        cfg.sample,
    )
    for group in groups:
        table = allocate(sizes[group], fractions[group])
        for p, row in enumerate(table):
            quotas[p][group] = row.tolist()
    with building(out_dir) as scratch:
        outs = [scratch / f.name for f in files]
        stats = map_partitions(client, assign_partition, files, outs, quotas, seed=cfg.seed, labelled=labelled)
        class_counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for part in stats:
            for name, labels in part.items():
                for label, n in labels.items():
                    class_counts[name][label] += n
        manifest = SplitManifest(
            splits={
                name: SplitRows(rows=sum(c.values()), class_counts=dict(sorted(c.items())))
                for name, c in sorted(class_counts.items())
            },
            predefined=sorted(predefined),
            parts=[f.name for f in files],
            kept=sum(sum(c.values()) for c in class_counts.values()),
        )
        write_json(scratch / MANIFEST, manifest)
    return manifest
