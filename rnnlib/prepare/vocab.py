"""Vocabulary and label encoder, fitted on the training split only (never validation/test),
optionally followed by the words of unlabelled text (`vocab.unlabelled_min_freq`).

Token counts are a Dask reduction: each partition counts its own training tokens, the partial
tables are merged on the cluster, and only the final (token, count) table reaches the driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from rnnlib.common.cluster import map_reduce
from rnnlib.common.fingerprint import digest_json
from rnnlib.common.storage import MANIFEST, building, partitions, read_json, write_json
from rnnlib.config import VocabConfig
from rnnlib.errors import InputError
from rnnlib.prepare.specials import SPECIALS, UNK_ID
from rnnlib.prepare.split import UNLABELLED_SPLIT, with_split

if TYPE_CHECKING:
    from distributed import Client

VOCAB_FILE, LABELS_FILE = "vocab.json", "labels.json"


@dataclass(frozen=True, eq=False)
class Vocabulary:
    tokens: tuple[str, ...]  # index = id; starts with SPECIALS

    @cached_property
    def hash(self) -> str:
        return digest_json(list(self.tokens))

    @cached_property
    def _value_set(self) -> pa.Array:
        return pa.array(self.tokens[len(SPECIALS) :], pa.string())

    def lookup(self, tokens: pa.Array) -> pa.Array:
        """Token strings -> int32 ids; unknown tokens -> <UNK>'s id. Vectorised."""
        ids = pc.index_in(tokens, value_set=self._value_set)
        return pc.fill_null(pc.add(ids, len(SPECIALS)), UNK_ID).cast(pa.int32())

    def save(self, path: Path) -> None:
        write_json(path, {"tokens": list(self.tokens), "hash": self.hash}, compact=True)

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        data = read_json(path)
        vocab = cls(tuple(data["tokens"]))
        if vocab.tokens[: len(SPECIALS)] != SPECIALS or vocab.hash != data["hash"]:
            raise InputError("vocabulary is damaged (hash or special tokens do not match)", file=str(path))
        return vocab


@dataclass(frozen=True)
class LabelEncoder:
    labels: tuple[str, ...]  # index = class id

    @property
    def hash(self) -> str:
        return digest_json(list(self.labels))

    def encode(self, labels: pa.Array) -> pa.Array:
        """Label strings -> int64 class ids; null where the label was unseen at fit time."""
        return pc.index_in(labels, value_set=pa.array(self.labels, pa.string())).cast(pa.int64())

    def save(self, path: Path) -> None:
        write_json(path, {"labels": list(self.labels), "hash": self.hash})

    @classmethod
    def load(cls, path: Path) -> LabelEncoder:
        data = read_json(path)
        encoder = cls(tuple(data["labels"]))
        if encoder.hash != data["hash"]:
            raise InputError("label encoder is damaged (hash does not match)", file=str(path))
        return encoder


@lru_cache(maxsize=4)
def load_fitted(vocab_dir: Path, stamp: int) -> tuple[Vocabulary, LabelEncoder]:
    """A fitted vocabulary and label encoder, read once per worker process (`stamp`: the
    vocabulary file's mtime, so a rewritten file is read again)."""
    return Vocabulary.load(vocab_dir / VOCAB_FILE), LabelEncoder.load(vocab_dir / LABELS_FILE)


def count_partition(tokens_file: Path, split_dir: Path | None, counted_split: str) -> pa.Table:
    """(token, count) and (label, count) of one partition's fitting rows (every row of an
    unlabelled corpus's partition: `split_dir` None)."""
    options = {"columns": ["tokens", "label"], "read_dictionary": ["tokens.list.element"]}
    if split_dir is None:
        table = pq.read_table(tokens_file, **options)
    else:
        table = with_split(tokens_file, split_dir, **options)
        table = table.filter(pc.equal(table["split"], counted_split))
    tokens = pc.list_flatten(table["tokens"].combine_chunks())  # dictionary-encoded
    occurrences = np.bincount(tokens.indices.to_numpy(zero_copy_only=False), minlength=len(tokens.dictionary))
    seen = occurrences > 0
    counts = [tokens.dictionary.filter(pa.array(seen)), pa.array(occurrences[seen], pa.int64())]
    labels = pc.value_counts(pc.drop_null(table["label"])).flatten()
    return pa.table(
        {
            "kind": pa.array(["token"] * len(counts[0]) + ["label"] * len(labels[0]), pa.string()),
            "value": pa.concat_arrays([counts[0], labels[0].cast(pa.string())]),
            "count": pa.concat_arrays([counts[1], labels[1]]),
        }
    )


def merge_counts(*tables: pa.Table) -> pa.Table:
    """Sum partial count tables (pandas: Acero warns on buffers that crossed the network)."""
    frame = pd.concat([t.to_pandas() for t in tables], ignore_index=True)
    summed = frame.groupby(["kind", "value"], sort=False, as_index=False)["count"].sum()
    return pa.Table.from_pandas(summed, preserve_index=False)


class VocabManifest(BaseModel):
    """The vocab stage's manifest: the vocabulary and labels, each with its digest."""

    counted_split: str
    vocab_size: int
    vocab_hash: str
    labels: list[str]
    labels_hash: str
    tokens_seen: int
    distinct_tokens_seen: int
    unlabelled_tokens: int = 0  # vocabulary entries added from the unlabelled text


def unlabelled_words(
    tokens_dirs: Sequence[str | Path], min_freq: int, known: pa.ChunkedArray, client: Client | None
) -> pa.Table:
    """(value, count) of the unlabelled corpora's words seen at least `min_freq` times and not
    `known`, most frequent first."""
    parts = [part for folder in tokens_dirs for part in partitions(folder)]
    counts = map_reduce(client, count_partition, parts, merge_counts, split_dir=None, counted_split=UNLABELLED_SPLIT)
    words = counts.filter(pc.equal(counts["kind"], "token"))
    words = words.filter(pc.greater_equal(words["count"], min_freq))
    known_words = pa.concat_arrays([pa.array(SPECIALS, known.type), *known.chunks])
    words = words.filter(pc.invert(pc.is_in(words["value"], value_set=known_words)))
    return words.sort_by([("count", "descending"), ("value", "ascending")])


def build_vocabulary(
    tokens_dir: str | Path,
    split_dir: str | Path,
    *,
    out_dir: str | Path,
    cfg: VocabConfig,
    counted_split: str,
    unlabelled_dirs: Sequence[str | Path] = (),
    client: Client | None = None,
) -> VocabManifest:
    """Fit the vocabulary and label encoder on the rows assigned to `counted_split`; with
    `cfg.unlabelled_min_freq`, the words of the unlabelled corpora in `unlabelled_dirs` follow
    (so `max_size` cuts them first)."""
    counts = map_reduce(
        client, count_partition, partitions(tokens_dir), merge_counts, split_dir=split_dir, counted_split=counted_split
    )
    is_token = pc.equal(counts["kind"], "token")
    tokens = counts.filter(is_token).sort_by([("count", "descending"), ("value", "ascending")])
    if tokens.num_rows == 0:
        raise InputError(f"the {counted_split!r} split has no tokens to fit a vocabulary on", file=str(tokens_dir))
    tokens = tokens.filter(pc.greater_equal(tokens["count"], cfg.min_freq))
    tokens = tokens.filter(pc.invert(pc.is_in(tokens["value"], value_set=pa.array(SPECIALS))))
    from_training = tokens.num_rows
    if cfg.unlabelled_min_freq is not None and unlabelled_dirs:
        extra = unlabelled_words(unlabelled_dirs, cfg.unlabelled_min_freq, tokens["value"], client)
        tokens = pa.concat_tables([tokens, extra.select(tokens.column_names)])
    if cfg.max_size is not None:
        tokens = tokens.slice(0, cfg.max_size - len(SPECIALS))
    vocab = Vocabulary(SPECIALS + tuple(tokens["value"].to_pylist()))
    labels = LabelEncoder(tuple(sorted(counts.filter(pc.invert(is_token))["value"].to_pylist())))
    if len(labels.labels) > cfg.max_labels:
        raise InputError(
            f"{len(labels.labels)} distinct labels in the {counted_split!r} split, more than "
            f"vocab.max_labels ({cfg.max_labels}): is the label column the right one?",
            file=str(tokens_dir),
        )
    with building(out_dir) as scratch:
        vocab.save(scratch / VOCAB_FILE)
        labels.save(scratch / LABELS_FILE)
        manifest = VocabManifest(
            counted_split=counted_split,
            vocab_size=len(vocab.tokens),
            vocab_hash=vocab.hash,
            labels=list(labels.labels),
            labels_hash=labels.hash,
            tokens_seen=int(pc.sum(counts.filter(is_token)["count"]).as_py()),
            distinct_tokens_seen=int(pc.sum(is_token).as_py()),
            unlabelled_tokens=max(0, len(vocab.tokens) - len(SPECIALS) - from_training),
        )
        write_json(scratch / MANIFEST, manifest)
    return manifest
