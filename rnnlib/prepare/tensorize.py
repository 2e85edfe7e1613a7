"""Tensorize: token lists -> integer id sequences in bounded Parquet shards, one folder per split,
with a manifest per split and a rejects table that accounts for every row not kept."""

from __future__ import annotations

import zlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from rnnlib.common.accounting import Accounting, outcomes, summarise
from rnnlib.common.cluster import map_partitions
from rnnlib.common.storage import MANIFEST, building, partitions, read_json, write_json
from rnnlib.config import TensorizeConfig
from rnnlib.prepare.split import with_split
from rnnlib.prepare.vocab import (
    LABELS_FILE,
    VOCAB_FILE,
    LabelEncoder,
    Vocabulary,
    load_fitted,
)

if TYPE_CHECKING:
    from distributed import Client

SCHEMA_VERSION = 1
SHARD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("ids", pa.list_(pa.int32())),
        ("length", pa.int32()),
        ("label", pa.int64()),  # null for unlabelled corpora
    ]
)
REJECTS_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("row", pa.int64()), ("reason", pa.string())])
REJECTS_DIR = "rejects"
UNSEEN_LABEL = "label unseen at fit time"


class TensorSpace(BaseModel):
    """What the ids and label indices of the shards mean."""

    schema_version: int
    vocab_hash: str
    vocab_size: int
    labels: list[str]
    labels_hash: str
    max_length: int | None


class Shard(BaseModel):
    file: str
    rows: int


class SplitTensors(TensorSpace):
    """One split's shards (`<split>/_manifest.json`), what reading its batches starts from."""

    split: str
    rows: int
    tokens: int
    unk_tokens: int
    truncated: int
    max_length_seen: int
    class_counts: dict[str, int]
    shards: list[Shard]

    @classmethod
    def read(cls, split_dir: str | Path) -> SplitTensors:
        return cls.model_validate(read_json(Path(split_dir) / MANIFEST))


class TensorizeManifest(Accounting, TensorSpace):
    """The tensorize stage's manifest: where every row went, and each split's rows."""

    splits: dict[str, int]


def encode_ids(tokens: pa.Array, vocab: Vocabulary, max_length: int | None) -> tuple[pa.Array, np.ndarray]:
    """list<string> (plain or dictionary-encoded; null rows become empty) -> (list<int32> ids
    truncated to max_length, original lengths). With a dictionary, each distinct token is looked
    up once instead of every occurrence."""
    if isinstance(tokens, pa.ChunkedArray):
        tokens = tokens.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(tokens), 0).to_numpy(zero_copy_only=False)
    if max_length is not None:
        tokens = pc.list_slice(tokens, 0, max_length)
    kept = np.minimum(lengths, max_length) if max_length is not None else lengths
    offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int32)
    flat = pc.list_flatten(tokens)
    if pa.types.is_dictionary(flat.type):
        ids = vocab.lookup(flat.dictionary).take(flat.indices)
    else:
        ids = vocab.lookup(flat)
    return pa.ListArray.from_arrays(pa.array(offsets), ids), lengths


def read_tokens(tokens_file: Path, split_dir: Path) -> pa.Table:
    """A tokens partition with its split, the tokens read dictionary-encoded (as Parquet stores
    them), so no token string is materialised or hashed per occurrence."""
    return with_split(tokens_file, split_dir, read_dictionary=["tokens.list.element"])


def tensorize_partition(
    in_file: Path,
    split_dir: Path,
    out_dir: Path,
    vocab_dir: Path,
    cfg: TensorizeConfig,
    labelled: bool,
) -> dict[str, Any]:
    vocab, encoder = load_fitted(vocab_dir, (vocab_dir / VOCAB_FILE).stat().st_mtime_ns)
    table = read_tokens(in_file, split_dir)
    reject = table["reject"]
    label_ids = encoder.encode(table["label"]) if labelled else pa.nulls(table.num_rows, pa.int64())
    if labelled:
        unseen = pc.and_(pc.is_null(reject), pc.is_null(label_ids))
        reject = pc.if_else(unseen, pa.scalar(UNSEEN_LABEL), reject)
    _write_rejects(table, reject, out_dir / REJECTS_DIR / in_file.name)
    ids, lengths = encode_ids(table["tokens"], vocab, cfg.max_length)  # once, for every row
    keep = pc.is_null(reject)
    encoded = pa.table(
        {"id": table["id"], "ids": ids, "length": pa.array(lengths), "label": label_ids, "split": table["split"]}
    ).filter(keep)
    # rows of a partition come in source order (often one class after another): shuffle them,
    # seeded by the partition, so every shard is a sample of its split
    shuffle = np.random.default_rng(zlib.crc32(in_file.name.encode())).permutation(encoded.num_rows)
    encoded = encoded.take(pa.array(shuffle))
    splits = {
        name: _write_split(encoded.filter(pc.equal(encoded["split"], name)), out_dir / name, in_file, cfg, encoder)
        for name in sorted(set(pc.unique(encoded["split"]).to_pylist()) - {None})
    }
    return {"outcomes": outcomes(reject), "splits": splits}


def _write_rejects(table: pa.Table, reject: pa.ChunkedArray, path: Path) -> None:
    """The partition's rejected rows, each with its source, row and reason."""
    rejected = table.select(["id", "source", "row"]).filter(pc.is_valid(reject))
    columns = {
        "id": rejected["id"],
        "source": rejected["source"],
        "row": rejected["row"],
        "reason": pc.drop_null(reject),
    }
    pq.write_table(pa.table(columns, schema=REJECTS_SCHEMA), path)


def _write_split(
    part: pa.Table, out: Path, in_file: Path, cfg: TensorizeConfig, encoder: LabelEncoder
) -> dict[str, Any]:
    """One split's rows of a partition as shards of at most `cfg.shard_rows`; its manifest entry."""
    ids = part["ids"].combine_chunks()
    original = part["length"].to_numpy()
    shard = pa.table(
        {"id": part["id"], "ids": ids, "length": pc.list_value_length(ids).cast(pa.int32()), "label": part["label"]},
        schema=SHARD_SCHEMA,
    )
    out.mkdir(exist_ok=True)
    shards = []
    for k, start in enumerate(range(0, shard.num_rows, cfg.shard_rows)):
        file = f"shard-{in_file.stem.removeprefix('part-')}-{k:03d}.parquet"
        chunk = shard.slice(start, cfg.shard_rows)
        pq.write_table(chunk, out / file)
        shards.append({"file": file, "rows": chunk.num_rows})
    flat = pc.list_flatten(ids)
    classes = pc.value_counts(pc.drop_null(part["label"])).to_pylist()
    return {
        "rows": shard.num_rows,
        "tokens": len(flat),
        "unk_tokens": int(pc.sum(pc.equal(flat, 1)).as_py() or 0),
        "truncated": int((original > cfg.max_length).sum()) if cfg.max_length else 0,
        "max_length_seen": int(original.max()) if len(original) else 0,
        "class_counts": {encoder.labels[c["values"]]: c["counts"] for c in classes},
        "shards": shards,
    }


def _merge_split(parts: list[dict[str, Any]]) -> dict[str, Any]:
    classes: Counter = Counter()
    for p in parts:
        classes.update(p["class_counts"])
    return {
        "rows": sum(p["rows"] for p in parts),
        "tokens": sum(p["tokens"] for p in parts),
        "unk_tokens": sum(p["unk_tokens"] for p in parts),
        "truncated": sum(p["truncated"] for p in parts),
        "max_length_seen": max(p["max_length_seen"] for p in parts),
        "class_counts": dict(sorted(classes.items())),
        "shards": [s for p in parts for s in p["shards"]],
    }


def tensorize(
    tokens_dir: str | Path,
    split_dir: str | Path,
    vocab_dir: str | Path,
    *,
    out_dir: str | Path,
    cfg: TensorizeConfig,
    labelled: bool,
    client: Client | None = None,
) -> TensorizeManifest:
    """Write `<split>/shard-*.parquet` with a manifest per split, plus `rejects/` and the
    vocabulary the ids index."""
    files = partitions(tokens_dir)
    vocab_dir = Path(vocab_dir)
    vocab = Vocabulary.load(vocab_dir / VOCAB_FILE)
    encoder = LabelEncoder.load(vocab_dir / LABELS_FILE)
    with building(out_dir) as scratch:
        (scratch / REJECTS_DIR).mkdir()
        stats = map_partitions(
            client,
            tensorize_partition,
            files,
            split_dir=split_dir,
            out_dir=scratch,
            vocab_dir=vocab_dir,
            cfg=cfg,
            labelled=labelled,
        )
        by_split: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for part in stats:
            for name, s in part["splits"].items():
                by_split[name].append(s)
        space = TensorSpace(
            schema_version=SCHEMA_VERSION,
            vocab_hash=vocab.hash,
            vocab_size=len(vocab.tokens),
            labels=list(encoder.labels),
            labels_hash=encoder.hash,
            max_length=cfg.max_length,
        ).model_dump()
        split_manifests = {
            name: SplitTensors(split=name, **_merge_split(parts), **space) for name, parts in sorted(by_split.items())
        }
        for name, split_manifest in split_manifests.items():
            write_json(scratch / name / MANIFEST, split_manifest)
        manifest = TensorizeManifest(
            **summarise(s["outcomes"] for s in stats).model_dump(),
            splits={name: m.rows for name, m in split_manifests.items()},
            **space,
        )
        vocab.save(scratch / VOCAB_FILE)  # what the ids mean, beside them
        write_json(scratch / MANIFEST, manifest)
    return manifest
