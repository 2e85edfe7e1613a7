"""The baseline a recurrent model has to beat: TF-IDF n-grams + logistic regression (scikit-learn),
fitted on the same training rows' preprocessed tokens and scored on the same test rows, so the
two are compared on exactly the same data.

Word-level recipes use word uni- and bigrams, character-level ones character 1-4-grams. The
regularisation strength is chosen on the validation split, as the recurrent model's early
stopping is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from joblib import Parallel, delayed
from pydantic import BaseModel
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from rnnlib.common.storage import partitions
from rnnlib.modeling.metrics import Averages, metrics
from rnnlib.prepare.split import with_split

C_GRID = (0.25, 1.0, 4.0, 16.0)


class BaselineResult(BaseModel):
    """The baseline's figures on the test split."""

    features: str
    c: float
    train_rows: int
    refit: bool = False  # fitted again on train + validation with the chosen C: train_rows counts both
    rows: int
    accuracy: float
    macro: Averages
    weighted: Averages


def split_documents(
    tokens_dir: str | Path, split_dir: str | Path, level: str
) -> dict[str, tuple[list[str], list[str]]]:
    """Per split, (documents, labels) of its kept rows: tokens joined back into a string (words
    by a space, characters as they were). Each partition is read once."""
    separator = " " if level == "word" else ""
    parts = []
    for part in partitions(tokens_dir):
        table = with_split(part, split_dir, columns=["tokens", "label", "reject"])
        table = table.filter(pc.is_null(table["reject"]))
        text = pc.binary_join(table["tokens"].cast(pa.list_(pa.string())), separator)
        parts.append(pa.table({"text": text, "label": table["label"], "split": table["split"]}))
    rows = pa.concat_tables(parts)
    return {
        name: (chosen["text"].to_pylist(), chosen["label"].to_pylist())
        for name in ("train", "val", "test")
        for chosen in [rows.filter(pc.equal(rows["split"], name))]
    }


def vectorizer(level: str) -> TfidfVectorizer:
    if level == "word":
        return TfidfVectorizer(
            tokenizer=str.split, token_pattern=None, lowercase=False, ngram_range=(1, 2), min_df=2, sublinear_tf=True
        )
    return TfidfVectorizer(analyzer="char", lowercase=False, ngram_range=(1, 4), sublinear_tf=True)


def fit_baseline(
    tokens_dir: str | Path, split_dir: str | Path, *, level: str, labels: list[str], refit: bool = False
) -> BaselineResult:
    """Fit on `train`, choose C on `val` (if there is one), score `test`. With `refit` (as the
    model does with `train.refit`), the chosen C is fitted again on train + validation first."""
    documents = split_documents(tokens_dir, split_dir, level)
    (train_docs, train_labels), (val_docs, val_labels), (test_docs, test_labels) = (
        documents["train"],
        documents["val"],
        documents["test"],
    )
    features = vectorizer(level)
    x_train = features.fit_transform(train_docs)

    def fitted(c: float) -> LogisticRegression:
        return LogisticRegression(C=c, max_iter=2000).fit(x_train, train_labels)

    if val_docs:
        x_val = features.transform(val_docs)
        candidates = dict(zip(C_GRID, Parallel(n_jobs=-1)(delayed(fitted)(c) for c in C_GRID)))
        best_c = max(C_GRID, key=lambda c: candidates[c].score(x_val, val_labels))
        model = candidates[best_c]
    else:
        best_c = C_GRID[1]
        model = fitted(best_c)
    if refit and val_docs:
        train_docs, train_labels = train_docs + val_docs, train_labels + val_labels
        features = vectorizer(level)
        model = LogisticRegression(C=best_c, max_iter=2000).fit(features.fit_transform(train_docs), train_labels)
    index = {label: i for i, label in enumerate(labels)}
    known = [i for i, label in enumerate(test_labels) if label in index]  # as the test shards hold
    test_docs, test_labels = [test_docs[i] for i in known], [test_labels[i] for i in known]
    predicted = model.predict(features.transform(test_docs))
    result = metrics(np.array([index[t] for t in test_labels]), np.array([index[p] for p in predicted]), labels)
    name = "word 1-2-grams" if level == "word" else "character 1-4-grams"
    return BaselineResult(
        features=f"TF-IDF {name} + logistic regression",
        c=best_c,
        train_rows=len(train_docs),
        refit=refit and bool(val_docs),
        rows=result["rows"],
        accuracy=result["accuracy"],
        macro=result["macro"],
        weighted=result["weighted"],
    )
