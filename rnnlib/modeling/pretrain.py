"""Word vectors learnt from text beyond the labelled rows, before the classifier is trained.

gensim's FastText learns them from the training split and the unlabelled text (never validation
or test rows), then they are written for the vocabulary, as a word2vec text file that
`model.embeddings` loads. FastText composes a vector from character n-grams, so a vocabulary token
too rare in that text still gets one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from rnnlib.common.storage import MANIFEST, building, partitions, write_json
from rnnlib.config import ConfigError, PretrainConfig
from rnnlib.errors import InputError
from rnnlib.prepare.specials import SPECIALS
from rnnlib.prepare.split import with_split
from rnnlib.prepare.vocab import VOCAB_FILE, Vocabulary

VECTORS_FILE = "vectors.txt"
log = logging.getLogger(__name__)


class TokenLists:
    """The token lists of the training split and of every unlabelled tokens output, read afresh
    on each pass (gensim reads the corpus once per epoch), one partition at a time."""

    def __init__(self, tokens_dir: str | Path, split_dir: str | Path, unlabelled_dirs: Sequence[str | Path]) -> None:
        self.tokens_dir, self.split_dir, self.unlabelled_dirs = Path(tokens_dir), Path(split_dir), unlabelled_dirs

    def columns(self) -> Iterator[pa.ChunkedArray]:
        """The token lists a partition at a time, as Arrow columns."""
        for part in partitions(self.tokens_dir):
            table = with_split(part, self.split_dir, columns=["tokens"])
            yield table.filter(pc.equal(table["split"], "train"))["tokens"]
        for folder in self.unlabelled_dirs:
            for part in partitions(folder):
                yield pq.read_table(part, columns=["tokens"])["tokens"]

    def __iter__(self) -> Iterator[list[str]]:
        for column in self.columns():
            yield from (tokens for tokens in column.to_pylist() if tokens)


def _write_vectors(path: Path, tokens: list[str], vectors: Any, dim: int) -> None:
    """word2vec's text format: a header line, then each token and its vector."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"{len(tokens)} {dim}\n")
        for token in tokens:
            fh.write(token + " " + " ".join(f"{v:.5g}" for v in vectors[token]) + "\n")


class VectorsManifest(BaseModel):
    """The vectors stage's manifest: the text learnt from and how the vocabulary was covered."""

    texts: int
    words: int  # in one pass
    epochs: int  # passes: pretrain.epochs, or more to read pretrain.min_words
    dim: int
    vocabulary: int
    learnt_as_words: int
    from_subwords_only: int  # tokens too rare to learn, given vectors from their n-grams
    seconds: float


def train_vectors(
    tokens_dir: str | Path,
    split_dir: str | Path,
    vocab_dir: str | Path,
    unlabelled_dirs: Sequence[str | Path],
    *,
    out_dir: str | Path,
    cfg: PretrainConfig,
    dim: int,
    seed: int,
) -> VectorsManifest:
    """Learn `dim`-sized vectors and write `vectors.txt` for every vocabulary token."""
    try:
        from gensim.models import FastText
    except ImportError:
        raise ConfigError("pretrain.vectors needs gensim: pip install 'rnnlib[pretrain]'") from None

    start = time.perf_counter()
    corpus = TokenLists(tokens_dir, split_dir, unlabelled_dirs)
    model = FastText(
        vector_size=dim,
        window=cfg.window,
        min_count=cfg.min_count,
        min_n=cfg.min_n,
        max_n=cfg.max_n,
        workers=cfg.workers,
        seed=seed,
    )
    model.build_vocab(corpus_iterable=corpus)
    if model.corpus_count == 0:
        raise InputError("no training or unlabelled text to learn word vectors from", file=str(tokens_dir))
    epochs = max(cfg.epochs, math.ceil(cfg.min_words / model.corpus_total_words))
    model.train(corpus_iterable=corpus, total_examples=model.corpus_count, epochs=epochs)
    tokens = [
        t
        for t in Vocabulary.load(Path(vocab_dir) / VOCAB_FILE).tokens[len(SPECIALS) :]
        if t and not any(c.isspace() for c in t)
    ]  # a text vectors file cannot hold those
    known = sum(t in model.wv.key_to_index for t in tokens)
    manifest = VectorsManifest(
        texts=model.corpus_count,
        words=model.corpus_total_words,
        epochs=epochs,
        dim=dim,
        vocabulary=len(tokens),
        learnt_as_words=known,
        from_subwords_only=len(tokens) - known,
        seconds=round(time.perf_counter() - start, 1),
    )
    with building(out_dir) as scratch:
        _write_vectors(scratch / VECTORS_FILE, tokens, model.wv, dim)
        write_json(scratch / MANIFEST, manifest)
    log.info(
        "word vectors from %d texts (%d words, %d passes): %d of %d vocabulary tokens learnt as words, the rest "
        "from their character n-grams",
        manifest.texts,
        manifest.words,
        epochs,
        known,
        len(tokens),
    )
    return manifest
