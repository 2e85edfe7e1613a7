"""The wide half of a wide-and-deep model: a linear TF-IDF model over a text's words and hashed
word bigrams, fitted apart from the recurrent model (convex, its regularisation chosen by
cross-validation on the training split when the validation split is small, on validation
otherwise), then blended with it: probabilities = w * deep + (1 - w) * wide, w = 0.5
unless validation clearly prefers another (`choose_blend`). On small sets such a linear model is
as good as the recurrent one and errs on other rows, so the blend beats both.

Its features come from the token ids the recurrent model reads (the same n-gram hashing as
`NgramBag`), and the fitted model is three tensors inside the bundle's weights: scoring, export
and prediction need nothing new. It is fitted as a scikit-learn pipeline with the baseline's
weighting (`TfidfTransformer(sublinear_tf=True)`, then `LogisticRegression` on the columns the
training rows use): a word said ten times in a long review counts 1 + log 10, not 10, so one
repeated word does not outweigh the rest of the text; `WideLinear` computes the same in torch.

    x_f = (1 + log count_f) * idf_f / ||(1 + log count) * idf||     (features the text holds)
    wide logits = x @ coef.T + intercept
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp
import torch
from pydantic import BaseModel
from safetensors.torch import load_file, save_file
from torch import nn

WIDE_FILE = "wide.safetensors"
REFIT_WIDE_FILE = "wide_refit.safetensors"  # fitted again on train + validation
HASH_MULTIPLIER = 1_000_003  # a prime; hashes stay below 2**63 for any bucket count up to 2**40
C_GRID = (1.0, 3.0, 10.0, 30.0, 100.0)  # inverse regularisation strengths tried
FOLDS = 5
# With fewer validation rows than this, C is chosen by cross-validation on the training split:
# on a few hundred rows, C values one row apart on validation differ on test by a point.
CROSS_VALIDATE_BELOW = 5_000
BLEND_GRID = np.linspace(0.0, 1.0, 21)  # the deep model's share


def feature_ids(
    ids: torch.Tensor, lengths: torch.Tensor, vocab_size: int, buckets: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, real) of a padded batch: each position's token id, then each bigram's bucket
    (offset by `vocab_size`); `real` masks out the padding."""
    real = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]
    bigrams = (ids[:, :-1] * HASH_MULTIPLIER + ids[:, 1:] + 2) % buckets + vocab_size
    return torch.cat([ids, bigrams], 1), torch.cat([real, real[:, 1:]], 1)


class WideLinear(nn.Module):
    """The fitted linear model, as buffers (never trained by the optimizer, never quantised)."""

    def __init__(self, vocab_size: int, num_classes: int, buckets: int) -> None:
        super().__init__()
        self.vocab_size, self.buckets = vocab_size, buckets
        self.register_buffer("scores", torch.zeros(vocab_size + buckets, num_classes))  # idf * coef
        self.register_buffer("idf_squared", torch.ones(vocab_size + buckets))
        self.register_buffer("intercept", torch.zeros(num_classes))

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        feature, tf = term_frequencies(*feature_ids(ids, lengths.to(ids.device), self.vocab_size, self.buckets))
        summed = (self.scores[feature].float() * tf[..., None]).sum(1)
        norm = (self.idf_squared[feature].float() * tf**2).sum(1, keepdim=True).clamp(min=1e-12).sqrt()
        return summed / norm + self.intercept.float()


def term_frequencies(features: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature, tf) per row: each distinct feature once with 1 + log of its count, the rest of
    the row's slots 0 with tf 0. Sorting a row puts a feature's repeats in one run; runs are
    counted with a cumulative sum and scatters, which ONNX export supports."""
    ordered = features.masked_fill(~real, -1).sort(1).values  # padding first, as run 0
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    run = starts.long().cumsum(1) - 1
    count = torch.zeros(ordered.shape, device=ordered.device).scatter_add(1, run, (ordered >= 0).float())
    feature = torch.zeros_like(ordered).scatter(1, run, ordered.clamp(min=0))
    tf = torch.where(count > 0, 1 + count.clamp(min=1).log(), torch.zeros_like(count))
    return feature, tf


class WideFit(BaseModel):
    """What fitting the wide model chose, how, and how it did on the validation split."""

    C: float
    chosen_by: Literal["validation", "cross-validation"] = "validation"
    cv_accuracy: float | None = None  # mean over the training split's folds, when chosen by them
    val_accuracy: float
    features: int  # distinct features seen in training: the columns the regression was fitted on


def _rows(split_dir: Path) -> tuple[pa.ListArray, np.ndarray]:
    table = pq.read_table(split_dir, columns=["ids", "label"])
    return table["ids"].combine_chunks(), table["label"].to_numpy()


def counts(rows: pa.ListArray, vocab_size: int, buckets: int) -> sp.csr_matrix:
    """Feature counts per row, through `feature_ids` itself (so fitting and scoring agree): all
    rows' ids run end to end as one sequence, the bigrams that span two rows left out."""
    flat = rows.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    row_of = np.repeat(np.arange(len(rows)), pc.list_value_length(rows).to_numpy(zero_copy_only=False))
    features, _ = feature_ids(torch.from_numpy(flat)[None], torch.tensor([len(flat)]), vocab_size, buckets)
    within = row_of[:-1] == row_of[1:]  # a bigram's two tokens in one row
    matrix = sp.csr_matrix(
        (
            np.ones(len(flat) + int(within.sum())),
            (
                np.concatenate([row_of, row_of[:-1][within]]),
                np.concatenate([features[0, : len(flat)].numpy(), features[0, len(flat) :].numpy()[within]]),
            ),
        ),
        shape=(len(rows), vocab_size + buckets),
    )
    matrix.sum_duplicates()
    return matrix


@dataclass(frozen=True)
class _Linear:
    """A fitted TF-IDF -> seen columns -> logistic regression pipeline."""

    pipeline: Any  # sklearn Pipeline: TfidfTransformer, VarianceThreshold, LogisticRegression

    @property
    def model(self) -> Any:
        return self.pipeline[-1]

    @property
    def idf(self) -> np.ndarray:
        return self.pipeline[0].idf_

    @property
    def seen(self) -> np.ndarray:
        """Which features the regression was fitted on: those that varied in its training rows."""
        return self.pipeline[1].get_support()

    @property
    def features(self) -> int:
        return int(self.seen.sum())


def _pipeline(C: float, seed: int) -> Any:
    """Counts -> sublinear TF-IDF, L2-normalised over every feature a text holds (what
    `WideLinear` computes) -> the columns that vary in the training rows -> the regression.
    A feature absent from every training row would keep a zero weight anyway; dropping those
    columns spares the solver the hashed bigrams no text used, most of the 2^18 buckets."""
    from sklearn.feature_extraction.text import TfidfTransformer
    from sklearn.feature_selection import VarianceThreshold
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        TfidfTransformer(sublinear_tf=True),
        VarianceThreshold(),
        LogisticRegression(C=C, max_iter=2000, random_state=seed),
    )


def _fit(train_counts: sp.csr_matrix, labels: np.ndarray, C: float, seed: int) -> _Linear:
    return _Linear(pipeline=_pipeline(C, seed).fit(train_counts, labels))


def _save(fitted: _Linear, num_classes: int, path: Path) -> None:
    """The fitted model as `WideLinear`'s tensors, one row of scores per class."""
    model, idf = fitted.model, fitted.idf
    coef = np.zeros((num_classes, len(idf)))  # zero for the features the regression never saw
    intercept = np.zeros(num_classes)
    if model.coef_.shape[0] == 1:  # two classes: one row, the second class's log-odds
        coef[model.classes_[1], fitted.seen], intercept[model.classes_[1]] = model.coef_[0], model.intercept_[0]
    else:
        coef[np.ix_(model.classes_, fitted.seen)], intercept[model.classes_] = model.coef_, model.intercept_
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "scores": torch.from_numpy((coef * idf).T.astype(np.float32)).contiguous(),
            "idf_squared": torch.from_numpy((idf**2).astype(np.float32)),
            "intercept": torch.from_numpy(intercept.astype(np.float32)),
        },
        path,
    )


def _cross_validated(train_counts: sp.csr_matrix, labels: np.ndarray, seed: int) -> tuple[_Linear, float]:
    """The pipeline at the C of `C_GRID` with the best mean accuracy over stratified folds of the
    training rows (each fold's idf from its own training rows), and that accuracy."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    search = GridSearchCV(
        _pipeline(1.0, seed),
        {"logisticregression__C": list(C_GRID)},
        scoring="accuracy",
        cv=StratifiedKFold(FOLDS, shuffle=True, random_state=seed),
        n_jobs=-1,
    ).fit(train_counts, labels)
    return _Linear(pipeline=search.best_estimator_), float(search.best_score_)


def fit_wide(
    tensors_dir: str | Path,
    vocab_size: int,
    num_classes: int,
    buckets: int,
    *,
    out_dir: Path,
    seed: int = 0,
    refit: bool = False,
    cross_validate_below: int = CROSS_VALIDATE_BELOW,
) -> WideFit:
    """Fit the wide model on the training split, C chosen by validation accuracy, or, with fewer
    than `cross_validate_below` validation rows, by cross-validation on the training split; its
    tensors go to `out_dir/wide.safetensors`. With `refit`, the same C fitted again on train +
    validation goes to `out_dir/wide_refit.safetensors`, the linear half of a refit model."""
    tensors_dir = Path(tensors_dir)
    train_rows, train_labels = _rows(tensors_dir / "train")
    val_rows, val_labels = _rows(tensors_dir / "val")
    train_counts, val_counts = counts(train_rows, vocab_size, buckets), counts(val_rows, vocab_size, buckets)

    def val_accuracy(fitted: _Linear) -> float:
        return float((fitted.pipeline.predict(val_counts) == val_labels).mean())

    cv_accuracy = None
    if len(val_labels) < cross_validate_below:
        fitted, cv_accuracy = _cross_validated(train_counts, train_labels, seed)
        C, accuracy = float(fitted.model.C), val_accuracy(fitted)
    else:
        candidates = {C: _fit(train_counts, train_labels, C, seed) for C in C_GRID}
        accuracies = {C: val_accuracy(fitted) for C, fitted in candidates.items()}
        C = max(C_GRID, key=accuracies.__getitem__)
        fitted, accuracy = candidates[C], accuracies[C]
    _save(fitted, num_classes, out_dir / WIDE_FILE)
    if refit:
        both = _fit(sp.vstack([train_counts, val_counts]).tocsr(), np.concatenate([train_labels, val_labels]), C, seed)
        _save(both, num_classes, out_dir / REFIT_WIDE_FILE)
    return WideFit(
        C=C,
        chosen_by="validation" if cv_accuracy is None else "cross-validation",
        cv_accuracy=None if cv_accuracy is None else round(cv_accuracy, 4),
        val_accuracy=round(accuracy, 4),
        features=fitted.features,
    )


def load_wide(path: str | Path) -> dict[str, torch.Tensor]:
    """The wide model's tensors, named as in the model's state (`wide.*`)."""
    return {f"wide.{name}": tensor for name, tensor in load_file(str(path)).items()}


class Blend(BaseModel):
    """The deep model's share of the blended probabilities, and validation accuracies."""

    weight: float
    val_accuracy: float
    deep_val_accuracy: float
    wide_val_accuracy: float
    wide: WideFit
    deep_test_accuracy: float | None = None  # set by the evaluation
    wide_test_accuracy: float | None = None


def choose_blend(model: nn.Module, val_dir: str | Path, num_classes: int, batch_size: int, wide: WideFit) -> Blend:
    """Set `model.blend`: an even blend, unless another weight of `BLEND_GRID` beats it on the
    validation split by more than that accuracy's standard error. Picking the best weight alone
    follows the noise of a small validation split (each weight's test accuracy differs from its
    validation one by about as much as the weights differ); an equal average of two models is
    the robust ensemble, and a clearly worse half (too little data for the recurrent one, say)
    still gets less weight."""
    from rnnlib.modeling.inference import predict_proba

    table = pq.read_table(val_dir, columns=["ids", "label"])
    ids, labels = table["ids"].combine_chunks(), table["label"].to_numpy()
    shares = []
    for weight in (1.0, 0.0):  # the deep model alone, then the wide one alone
        model.blend.fill_(weight)
        shares.append(predict_proba(model, ids, num_classes, batch_size))
    deep, linear = shares
    accuracy = {float(w): float(((w * deep + (1 - w) * linear).argmax(1) == labels).mean()) for w in BLEND_GRID}
    best = max(accuracy, key=lambda w: (accuracy[w], -abs(w - 0.5)))
    even = accuracy[0.5]
    weight = best if accuracy[best] - even > np.sqrt(even * (1 - even) / len(labels)) else 0.5
    model.blend.fill_(weight)
    return Blend(
        weight=round(weight, 2),
        val_accuracy=round(accuracy[weight], 4),
        deep_val_accuracy=round(accuracy[1.0], 4),
        wide_val_accuracy=round(accuracy[0.0], 4),
        wide=wide,
    )
