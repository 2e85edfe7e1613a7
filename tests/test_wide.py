"""Wide and deep: the linear TF-IDF half computes in the model what it was fitted on, the blend is
chosen on validation and recorded, the bundle scores as it was evaluated, and toggling it reuses
the recurrent fit."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from rnnlib.config import TrainFlowConfig
from rnnlib.modeling.bundle import load_bundle
from rnnlib.modeling.model import RNNClassifier
from rnnlib.modeling.pipeline import train_model
from rnnlib.modeling.train import BEST
from rnnlib.modeling.wide import WIDE_FILE, WideLinear, counts, fit_wide, load_wide, term_frequencies


def _headlines(path: Path, rows: int = 600) -> None:
    """Two classes told apart by word pairs more than by single words, as short texts are."""
    rng = np.random.default_rng(0)
    words = ["market", "team", "stock", "match", "price", "goal", "trade", "coach", "bank", "score"]
    lines = ["text,label"]
    for i in range(rows):
        label = i % 2
        filler = " ".join(rng.choice(words, 4))
        cue = "shares fell" if label else "late goal"
        lines.append(f"{filler} {cue} {' '.join(rng.choice(words, 2))},{'business' if label else 'sport'}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def wide_and_deep(tmp_path_factory):
    work = tmp_path_factory.mktemp("wide")
    _headlines(work / "d.csv")
    config = TrainFlowConfig.model_validate(
        {
            "source": {"inputs": [{"path": str(work / "d.csv")}]},
            "preprocess": {"level": "word"},
            "work_dir": str(work / "w"),
            "model": {"cell": "gru", "embedding_dim": 16, "hidden_size": 16, "wide": True},
            "train": {"epochs": 2, "batch_size": 32},
            "evaluate": {"graph_engines": False},
        }
    )
    return config, train_model(config)


def test_the_wide_half_computes_what_it_was_fitted_on(wide_and_deep, tmp_path):
    """The torch module's logits (features hashed and weighted in the model) equal the fitted
    coefficients applied to the sparse TF-IDF rows the regression was fitted on."""
    _, trained = wide_and_deep
    data, buckets = trained.data, 2**10
    tensors = Path(data.tensorize.path)
    fitted = fit_wide(tensors, data.vocab_size, len(data.labels), buckets, out_dir=tmp_path)
    assert fitted.val_accuracy > 0.9  # the cue bigrams separate the classes
    module = WideLinear(data.vocab_size, len(data.labels), buckets)
    module.load_state_dict({k.removeprefix("wide."): v for k, v in load_wide(tmp_path / WIDE_FILE).items()})
    rows, train = (pq.read_table(tensors / split)["ids"].combine_chunks() for split in ("test", "train"))
    tfidf = TfidfTransformer(sublinear_tf=True).fit(counts(train, data.vocab_size, buckets))
    used = counts(train, data.vocab_size, buckets).getnnz(axis=0) > 0
    assert fitted.features == used.sum() < len(used)  # fitted on the columns training uses, no other
    assert not module.scores[~torch.from_numpy(used)].any()
    coef = module.scores.numpy().T / tfidf.idf_  # the regression's coefficients
    expected = tfidf.transform(counts(rows, data.vocab_size, buckets)) @ coef.T + module.intercept.numpy()
    lengths = torch.tensor([len(r) for r in rows.to_pylist()])
    ids = torch.zeros(len(rows), int(lengths.max()), dtype=torch.long)  # padded, as scoring batches are
    for i, r in enumerate(rows.to_pylist()):
        ids[i, : len(r)] = torch.tensor(r)
    np.testing.assert_allclose(module(ids, lengths).numpy(), expected, rtol=1e-4, atol=1e-4)
    # and what it was fitted on is the baseline's weighting: the same regression fitted here on
    # sublinear TF-IDF rows predicts what the module does
    reference = make_pipeline(TfidfTransformer(sublinear_tf=True), LogisticRegression(C=fitted.C, max_iter=2000)).fit(
        counts(train, data.vocab_size, buckets), pq.read_table(tensors / "train")["label"].to_numpy()
    )
    np.testing.assert_allclose(
        torch.softmax(module(ids, lengths), 1).numpy(),
        reference.predict_proba(counts(rows, data.vocab_size, buckets)),
        atol=1e-3,
    )


def test_a_repeated_word_counts_one_plus_the_log_of_its_count():
    """The baseline's sublinear weighting: in a long review a word said ten times must not
    outweigh ten words said once. Padding counts for nothing."""
    features = torch.tensor([[7, 3, 7, 7, 9, 0], [4, 4, 0, 0, 0, 0]])
    real = torch.tensor([[True] * 5 + [False], [True, True] + [False] * 4])
    feature, tf = term_frequencies(features, real)
    for row, expected in enumerate([{7: 1 + np.log(3), 3: 1.0, 9: 1.0}, {4: 1 + np.log(2)}]):
        held = {int(f): float(t) for f, t in zip(feature[row], tf[row]) if t > 0}
        assert held == pytest.approx(expected)


def test_the_blend_is_chosen_on_validation_and_recorded(wide_and_deep):
    _, trained = wide_and_deep
    evaluation = trained.evaluation
    blend = evaluation.blend
    assert blend is not None and 0.0 <= blend.weight <= 1.0
    n = trained.data.splits["val"]
    error = (blend.val_accuracy * (1 - blend.val_accuracy) / n) ** 0.5
    assert blend.val_accuracy >= max(blend.deep_val_accuracy, blend.wide_val_accuracy) - error - 1e-4
    assert blend.deep_test_accuracy is not None and blend.wide_test_accuracy is not None
    bundle = load_bundle(evaluation.bundle)
    assert float(bundle.model.blend) == pytest.approx(blend.weight, abs=1e-6)
    card = (Path(evaluation.bundle) / "README.md").read_text()
    assert "## Wide and deep" in card and f"{blend.weight:.2f} x the recurrent model's" in card
    assert blend.wide.chosen_by == "cross-validation"  # a validation split of 90 rows
    assert f"C={blend.wide.C:g}, chosen by cross-validation on the training split" in card


def test_a_wide_and_deep_bundle_scores_its_blend(wide_and_deep):
    """What scoring and prediction compute (the model's forward) is the blend of the two halves'
    probabilities at the recorded weight."""
    from rnnlib.modeling.inference import predict_proba

    _, trained = wide_and_deep
    bundle = load_bundle(trained.evaluation.bundle)
    model, k = bundle.model.eval(), len(bundle.labels.labels)
    ids = pq.read_table(Path(trained.data.tensorize.path) / "test")["ids"].combine_chunks()
    share = float(model.blend)
    blended = predict_proba(model, ids, k, 64)
    model.blend.fill_(1.0)
    deep = predict_proba(model, ids, k, 64)
    model.blend.fill_(0.0)
    wide = predict_proba(model, ids, k, 64)
    np.testing.assert_allclose(blended, share * deep + (1 - share) * wide, atol=1e-5)
    recurrent = RNNClassifier(trained.data.vocab_size, k, bundle.model.cfg.model_copy(update={"wide": False}))
    recurrent.load_state_dict(torch.load(Path(trained.fit.path) / BEST, weights_only=True))
    np.testing.assert_allclose(deep, predict_proba(recurrent.eval(), ids, k, 64), atol=1e-5)  # share 1: the fit's
    assert not np.allclose(deep, wide, atol=1e-3)  # two different models


def test_toggling_wide_reuses_the_recurrent_fit(wide_and_deep):
    config, trained = wide_and_deep
    plain = train_model(config.model_copy(update={"model": config.model.model_copy(update={"wide": False})}))
    assert plain.fit.cached and plain.fit.key == trained.fit.key and plain.wide is None
    assert plain.evaluation.blend is None and plain.evaluate.key != trained.evaluate.key


def test_an_even_blend_unless_validation_clearly_prefers_another(wide_and_deep):
    """Two halves alike on validation are averaged; a recurrent half that is confidently wrong
    (its head turned around) beside the fitted linear one gets clearly less weight."""
    from rnnlib.modeling.wide import choose_blend

    _, trained = wide_and_deep
    data = trained.data
    val = Path(data.tensorize.path) / "val"
    model = load_bundle(trained.evaluation.bundle).model.eval()
    fitted = trained.wide.manifest
    alike = choose_blend(model, val, len(data.labels), 64, fitted)
    if abs(alike.deep_val_accuracy - alike.wide_val_accuracy) < 0.01:
        assert alike.weight == 0.5
    with torch.no_grad():
        model.head.weight.mul_(-20.0)
        model.head.bias.mul_(-20.0)
    wrong = choose_blend(model, val, len(data.labels), 64, fitted)
    assert wrong.deep_val_accuracy < 0.5 < wrong.wide_val_accuracy and wrong.weight < 0.5
    assert wrong.val_accuracy > 0.9


def test_a_wide_and_deep_bundle_exports_to_onnx(wide_and_deep, tmp_path):
    """The linear half's per-text term counting (a sort, a cumulative sum and scatters) traces:
    the exported graph gives PyTorch's probabilities on another batch shape than it was traced
    with (`export_onnx` checks that, and raises if not), texts with repeated words included."""
    import onnxruntime

    from rnnlib.modeling.export import export_onnx

    _, trained = wide_and_deep
    path = export_onnx(trained.evaluation.bundle, tmp_path / "model.onnx")
    model = load_bundle(trained.evaluation.bundle).model.eval()
    ids = torch.tensor([[5, 6, 5, 5, 7, 6], [8, 8, 8, 0, 0, 0]])  # repeats, and a padded row
    lengths = torch.tensor([6, 3])
    got = onnxruntime.InferenceSession(str(path)).run(None, {"ids": ids.numpy(), "lengths": lengths.numpy()})[0]
    with torch.no_grad():
        want = model(ids, lengths).float().softmax(-1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_quantising_a_wide_and_deep_graph_logs_no_warning_per_integer_tensor(wide_and_deep, tmp_path, caplog):
    """The quantiser leaves the linear half's integer and boolean tensors as they are, as it should;
    its warning about each of them (a dozen lines a tensor, on the root logger) is not shown."""
    from rnnlib.modeling.export import LEFT_UNQUANTISED, export_onnx, quantise_onnx

    _, trained = wide_and_deep
    graph = export_onnx(trained.evaluation.bundle, tmp_path / "model.onnx")
    with caplog.at_level(logging.WARNING):
        quantise_onnx(graph, tmp_path / "model-int8.onnx")
    assert (tmp_path / "model-int8.onnx").is_file()
    assert not [r for r in caplog.records if r.getMessage().startswith(LEFT_UNQUANTISED)]
    logging.warning("%s: a warning after quantising still shows", LEFT_UNQUANTISED)
    assert caplog.records[-1].getMessage().endswith("still shows")


def _split(directory: Path, ids: list[list[int]], labels: np.ndarray) -> None:
    directory.mkdir(parents=True)
    pq.write_table(pa.table({"ids": ids, "label": labels.astype(np.int64)}), directory / "part-0.parquet")


def test_a_small_validation_split_leaves_c_to_cross_validation(tmp_path):
    """On a few hundred validation rows the best C is a coin toss, so it is chosen on folds of
    the training split: the validation rows' labels (here turned around) cannot move it, as
    they do when validation chooses."""
    rng = np.random.default_rng(0)
    vocab, weights = 300, rng.normal(size=300)

    def rows(n: int) -> tuple[list[list[int]], np.ndarray]:
        ids = rng.integers(2, vocab, size=(n, 12))
        labels = (weights[ids].sum(1) + rng.normal(scale=2.0, size=n) > 0).astype(int)
        return ids.tolist(), labels

    (train, train_labels), (val, val_labels) = rows(600), rows(200)
    fits = {}
    for turned in (False, True):
        tensors = tmp_path / f"turned-{turned}"
        _split(tensors / "train", train, train_labels)
        _split(tensors / "val", val, 1 - val_labels if turned else val_labels)
        for below in (0, 1_000):  # validation chooses; cross-validation chooses
            fits[turned, below] = fit_wide(
                tensors, vocab, 2, 2**10, out_dir=tmp_path / f"{turned}-{below}", cross_validate_below=below
            )
    assert fits[False, 0].chosen_by == "validation" and fits[False, 0].C != fits[True, 0].C
    assert fits[False, 1_000].chosen_by == fits[True, 1_000].chosen_by == "cross-validation"
    assert fits[False, 1_000].C == fits[True, 1_000].C
    assert 0.5 < fits[False, 1_000].cv_accuracy <= 1.0
