"""fastText, the second peer every recipe figure stands beside: `fasttext.train_supervised` on
exactly the rows the recipe's model and its TF-IDF + LR baseline use (the prepared tokens of the
training split), its settings chosen on the validation split as the others' are, scored on the
same test rows. A benchmark dependency only (`pip install -e ".[bench]"`): the pipeline never
needs it.

Character-level recipes give fastText each character as a token and let it choose character
n-grams up to 4 as word n-grams, the features of the TF-IDF baseline's character 1-4-grams.
"""

from __future__ import annotations

import itertools
import random
import tempfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from rnnlib.modeling.baseline import split_documents
from rnnlib.modeling.metrics import Averages, metrics

WORD_GRID = {"wordNgrams": (1, 2), "epoch": (5, 25), "lr": (0.1, 0.5, 1.0)}
CHAR_GRID = {"wordNgrams": (2, 3, 4), "epoch": (10, 25), "lr": (0.1, 0.5, 1.0)}


class PeerResult(BaseModel):
    """fastText's figures on the test split, and the settings validation chose."""

    features: str
    train_rows: int
    rows: int
    accuracy: float
    macro: Averages
    weighted: Averages


def _lines(documents: list[str], labels: list[str] | None, level: str) -> str:
    texts = documents if level == "word" else [" ".join(d.replace(" ", "_")) for d in documents]
    if labels is None:
        return "\n".join(texts) + "\n"
    return "\n".join(f"__label__{label.replace(' ', '_')} {t}" for label, t in zip(labels, texts)) + "\n"


def _predict(model, documents: list[str], level: str) -> list[str]:
    texts = _lines(documents, None, level).splitlines()
    predicted, _ = model.predict(texts, k=1)
    return [p[0].removeprefix("__label__") for p in predicted]


def _train(documents: list[str], labels: list[str], level: str, seed: int, folder: str, **settings):
    import fasttext

    order = list(range(len(documents)))
    random.Random(seed).shuffle(order)  # fastText reads its file in order: rows grouped by class would skew it
    path = Path(folder) / "train.txt"
    path.write_text(_lines([documents[i] for i in order], [labels[i] for i in order], level), encoding="utf-8")
    return fasttext.train_supervised(str(path), thread=1, seed=seed, verbose=0, **settings)


def fit_fasttext(
    tokens_dir: str | Path,
    split_dir: str | Path,
    *,
    level: str,
    labels: list[str],
    seed: int = 0,
    refit: bool = False,
) -> PeerResult:
    """Train on `train` for every setting of the grid, keep the best on `val`, score `test`; with
    `refit` (as the model does with `train.refit`), the chosen setting is trained again on train +
    validation first. One thread, so a seed gives one result."""
    documents = split_documents(tokens_dir, split_dir, level)
    (train_docs, train_labels), (val_docs, val_labels), (test_docs, test_labels) = (
        documents["train"],
        documents["val"],
        documents["test"],
    )
    original = {label.replace(" ", "_"): label for label in labels}
    grid = WORD_GRID if level == "word" else CHAR_GRID
    with tempfile.TemporaryDirectory() as folder:
        ranked = []  # (validation accuracy, grid position, settings), best first once sorted
        best, best_score = None, -1.0  # only the best model is kept: each can hold hundreds of MB
        for position, values in enumerate(itertools.product(*grid.values())):
            settings = dict(zip(grid, values))
            try:
                model = _train(train_docs, train_labels, level, seed, folder, **settings)
            except RuntimeError:  # "Encountered NaN": the rate is too high for this data
                continue
            score = float(np.mean([original[p] == t for p, t in zip(_predict(model, val_docs, level), val_labels)]))
            ranked.append((score, position, settings))
            if score > best_score:
                best, best_score = model, score
        ranked.sort(key=lambda entry: (-entry[0], entry[1]))
        best_settings = ranked[0][2]
        if refit:
            train_docs, train_labels = train_docs + val_docs, train_labels + val_labels
            best = None
            for _, _, settings in ranked:  # a rate that held on train alone may diverge on more rows
                try:
                    best, best_settings = _train(train_docs, train_labels, level, seed, folder, **settings), settings
                    break
                except RuntimeError:
                    continue
            if best is None:
                raise RuntimeError("fastText diverged on train + validation at every setting of the grid")
    index = {label: i for i, label in enumerate(labels)}
    known = [i for i, label in enumerate(test_labels) if label in index]  # as the test shards hold
    predicted = _predict(best, [test_docs[i] for i in known], level)
    result = metrics(
        np.array([index[test_labels[i]] for i in known]), np.array([index[original[p]] for p in predicted]), labels
    )
    described = ", ".join(f"{k} {v}" for k, v in best_settings.items()) + (
        ", refit on train + validation" if refit else ""
    )
    if best_settings != ranked[0][2]:
        described += f" (validation's first choice, {ranked[0][2]}, diverged there)"
    return PeerResult(
        features=f"fastText ({described})",
        train_rows=len(train_docs),
        rows=result["rows"],
        accuracy=result["accuracy"],
        macro=result["macro"],
        weighted=result["weighted"],
    )
