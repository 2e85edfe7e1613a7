"""Where a classifier's first weights come from besides a random start: word vectors from a
standard text file, or an earlier bundle's weights (a warm start). Rows are mapped by token, so
the vocabularies need not match."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Collection, Sequence
from typing import Any

import fsspec
import numpy as np
import torch
from torch import nn

from rnnlib.common.fingerprint import url_digest
from rnnlib.common.storage import read_json
from rnnlib.config import ConfigError, EmbeddingsConfig
from rnnlib.errors import InputError
from rnnlib.modeling.bundle import CONFIG, load_bundle, locate_bundle
from rnnlib.modeling.model import RNNClassifier, SeedEnsemble
from rnnlib.prepare.specials import SPECIALS

log = logging.getLogger(__name__)


def read_vectors(path: str, wanted: Collection[str], fmt: str = "auto") -> tuple[dict[str, np.ndarray], int]:
    """The vectors of the `wanted` words in a text vectors file, and their dimension. Only those
    rows are parsed, so a multi-gigabyte file costs one streamed read."""
    with fsspec.open(path, "rt", encoding="utf-8", errors="replace", compression="infer") as fh:
        first = fh.readline()
        fields = first.split()
        has_header = fmt in ("word2vec", "fasttext") or (
            fmt == "auto" and len(fields) == 2 and all(f.isdigit() for f in fields)
        )
        if not fields:
            raise InputError("empty vectors file", file=path)
        dim = int(fields[1]) if has_header else len(fields) - 1
        lines = fh if has_header else itertools.chain([first], fh)
        found: dict[str, np.ndarray] = {}
        for number, line in enumerate(lines, start=2 if has_header else 1):
            word, _, rest = line.rstrip("\n").partition(" ")
            if word not in wanted or word in found:
                continue
            values = np.array(rest.split(), dtype=np.float32)
            if len(values) != dim:
                raise InputError(f"a vector of {len(values)} values where the file's are {dim}", file=path, row=number)
            found[word] = values
    return found, dim


def load_embeddings(embedding: nn.Embedding, tokens: Sequence[str], cfg: EmbeddingsConfig) -> dict[str, Any]:
    """Set the rows of the tokens found in the vectors file (exactly, else lower-cased); the rest
    keep their random start. Returns the coverage."""
    words = tokens[len(SPECIALS) :]
    vectors, dim = read_vectors(cfg.path, {*words, *(w.lower() for w in words)}, cfg.format)
    if dim != embedding.embedding_dim:
        raise ConfigError(
            f"{cfg.path}: vectors of {dim} dimensions, but model.embedding_dim is {embedding.embedding_dim}"
        )
    rows = {i: vectors.get(t, vectors.get(t.lower())) for i, t in enumerate(tokens) if i >= len(SPECIALS)}
    hits = {i: v for i, v in rows.items() if v is not None}
    with torch.no_grad():
        if hits:
            embedding.weight[torch.tensor(list(hits))] = torch.from_numpy(np.stack(list(hits.values())))
    embedding.weight.requires_grad_(not cfg.freeze)
    report = {
        "file": cfg.path,
        "found": len(hits),
        "vocabulary": len(words),
        "coverage": round(len(hits) / max(len(words), 1), 4),
        "frozen": cfg.freeze,
    }
    log.info(
        "pretrained vectors: %d of %d vocabulary tokens found (%.1f%%) in %s",
        len(hits),
        len(words),
        100 * report["coverage"],
        cfg.path,
    )
    return report


def warm_start(network: RNNClassifier, tokens: Sequence[str], labels: Sequence[str], source: str) -> dict[str, Any]:
    """Copy a bundle's weights into `network`: token rows (the embedding and the bag of n-grams'
    unigrams) by token; the head only when the labels are the same, in the same order; the
    hashed n-gram rows only when the vocabulary is the same (their hashes are of ids); every
    other weight where its shape fits. What is not copied keeps its random start. From a seed
    ensemble's bundle, its first network's weights."""
    path = locate_bundle(source)
    bundle = load_bundle(path)
    source_network = bundle.model.members[0] if isinstance(bundle.model, SeedEnsemble) else bundle.model
    old, new = source_network.state_dict(), network.state_dict()
    old_ids = {t: i for i, t in enumerate(bundle.vocab.tokens)}
    pairs = [(i, old_ids[t]) for i, t in enumerate(tokens) if t in old_ids]
    to_rows, from_rows = (torch.tensor(side, dtype=torch.long) for side in zip(*pairs)) if pairs else (None, None)
    same_vocab, same_labels = tuple(tokens) == bundle.vocab.tokens, tuple(labels) == bundle.labels.labels
    copied, kept = [], []
    for name, value in new.items():
        before = old.get(name)
        if before is None or before.shape[1:] != value.shape[1:] or (name.startswith("head.") and not same_labels):
            kept.append(name)
        elif name in ("embedding.weight", "ngrams.embedding.weight") and not (
            same_vocab and before.shape == value.shape
        ):
            if to_rows is not None:
                value[to_rows] = before[from_rows]
            copied.append(f"{name} ({len(pairs)} rows by token)")
        elif before.shape == value.shape:
            value.copy_(before)
            copied.append(name)
        else:
            kept.append(name)
    network.load_state_dict(new)
    report = {
        "bundle": str(path),
        "version": bundle.version,
        "rows_by_token": len(pairs),
        "vocabulary": len(tokens),
        "copied": copied,
        "kept_initial": kept,
    }
    log.info(
        "warm start from %s: %d of %d tokens' rows mapped; kept their random start: %s",
        path,
        len(pairs),
        len(tokens),
        ", ".join(kept) or "nothing",
    )
    return report


def initial_identity(
    embeddings: EmbeddingsConfig | None, init_from: str | None, encoder: str | None = None
) -> dict[str, str]:
    """What the first weights depend on beyond the configuration: the vectors and encoder files'
    content and the warm-start bundle's version (so a changed file or a newly promoted model
    re-trains)."""
    identity = {}
    for name, file in (("embeddings", embeddings.path if embeddings else None), ("encoder", encoder)):
        if file is None:
            continue
        fs, path = fsspec.core.url_to_fs(file)
        if not fs.exists(path):
            raise InputError(f"{name} file not found", file=file)
        identity[name] = url_digest(fs, path)
    if init_from is not None:
        identity["init_from"] = read_json(locate_bundle(init_from) / CONFIG)["version"]
    return identity
