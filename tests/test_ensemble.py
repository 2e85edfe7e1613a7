"""Seed ensembles (`model.ensemble`): each network is the single model of its seed (and reuses it),
the bundle's probabilities are the average of its networks' blended with the linear half, the
card and metrics show each network alone, and the bundle exports and predicts like any other."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from rnnlib.config import TrainFlowConfig
from rnnlib.modeling.bundle import load_bundle
from rnnlib.modeling.card import CARD
from rnnlib.modeling.inference import predict_proba
from rnnlib.modeling.model import RNNClassifier, SeedEnsemble, member_config
from rnnlib.modeling.pipeline import train_model
from rnnlib.modeling.train import BEST


def _reviews(path: Path, rows: int = 500) -> None:
    """Two classes told apart by a cue among shared filler words, with label noise, so that
    networks from different seeds disagree on some rows."""
    rng = np.random.default_rng(1)
    words = ["plot", "actor", "scene", "music", "story", "ending", "camera", "script", "cast", "film"]
    lines = ["text,label"]
    for i in range(rows):
        label = i % 2 if rng.random() > 0.2 else 1 - i % 2
        cue = rng.choice(["great fun", "loved it"] if label else ["dull mess", "hated it"])
        lines.append(
            f"{' '.join(rng.choice(words, 5))} {cue} {' '.join(rng.choice(words, 2))},{'pos' if label else 'neg'}"
        )
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    """Two networks, refit, with the linear half: every part an ensemble touches."""
    work = tmp_path_factory.mktemp("ensemble")
    _reviews(work / "d.csv")
    config = TrainFlowConfig.model_validate(
        {
            "source": {"inputs": [{"path": str(work / "d.csv")}]},
            "preprocess": {"level": "word"},
            "work_dir": str(work / "w"),
            "model": {"cell": "gru", "embedding_dim": 16, "hidden_size": 16, "wide": True, "ensemble": 2},
            "train": {"epochs": 2, "batch_size": 32, "seed": 3, "refit": True},
            "evaluate": {"graph_engines": False},
        }
    )
    return config, train_model(config)


def test_each_network_is_the_single_model_of_its_seed(ensemble):
    """The ensemble's second network is what training seed 4 alone gives, reused from the cache."""
    config, trained = ensemble
    assert len(trained.fits) == len(trained.refits) == 2
    single = config.model_copy(
        update={
            "model": config.model.model_copy(update={"ensemble": 1}),
            "train": config.train.model_copy(update={"seed": 4}),
        }
    )
    alone = train_model(single)
    assert alone.fit.cached and alone.fit.key == trained.fits[1].key
    assert alone.refit.cached and alone.refit.key == trained.refits[1].key
    assert trained.fits[0].key != trained.fits[1].key


def test_the_bundle_averages_its_networks_then_blends_the_linear_half(ensemble):
    """What scoring computes is the mean of the refit networks' probabilities, blended with the
    linear half at the recorded weight; the networks differ (their seeds do)."""
    _, trained = ensemble
    bundle = load_bundle(trained.evaluation.bundle)
    model, k = bundle.model, len(bundle.labels.labels)
    assert isinstance(model, SeedEnsemble) and len(model.members) == 2
    ids = pq.read_table(Path(trained.data.tensorize.path) / "test")["ids"].combine_chunks()
    networks = []
    for refit in trained.refits:
        network = RNNClassifier(trained.data.vocab_size, k, member_config(bundle.model.cfg))
        network.load_state_dict(torch.load(Path(refit.path) / BEST, weights_only=True))
        networks.append(predict_proba(network.eval(), ids, k, 64))
    share = float(model.blend)
    assert share == trained.evaluation.blend.weight
    blended = predict_proba(model, ids, k, 64)
    model.blend.fill_(1.0)
    deep = predict_proba(model, ids, k, 64)
    model.blend.fill_(0.0)
    wide = predict_proba(model, ids, k, 64)
    np.testing.assert_allclose(deep, (networks[0] + networks[1]) / 2, atol=1e-5)
    np.testing.assert_allclose(blended, share * deep + (1 - share) * wide, atol=1e-5)
    assert not np.allclose(deep, wide, atol=1e-3)
    assert not np.allclose(networks[0], networks[1], atol=1e-3)


def test_the_card_and_metrics_show_each_network_alone(ensemble):
    _, trained = ensemble
    evaluation = trained.evaluation
    members = evaluation.ensemble
    assert [m.seed for m in members] == [3, 4]
    assert [m.selection.epoch for m in members] == [f.manifest.best_epoch for f in trained.fits]
    assert [m.refit_epochs for m in members] == [r.manifest.epochs for r in trained.refits]
    bundle = load_bundle(evaluation.bundle)
    test = pq.read_table(Path(trained.data.tensorize.path) / "test")
    truth, k = test["label"].to_numpy(), len(bundle.labels.labels)
    for index, member in enumerate(members):
        alone = predict_proba(bundle.model.alone(index), test["ids"].combine_chunks(), k, 64)
        assert member.test_accuracy == round(float((alone.argmax(1) == truth).mean()), 4)
    card = (Path(evaluation.bundle) / CARD).read_text()
    assert "## Seed ensemble" in card and "trained alike from seeds 3 to 4" in card
    assert f"| seed 4 | {members[1].selection.epoch} |" in card
    assert f"**{evaluation.accuracy:.4f}**" in card
    assert "as many epochs as each network's chosen run" in card
    assert evaluation.ensemble_summary().startswith(f"an ensemble of 2 seeds, {evaluation.accuracy:.4f}")


def test_an_ensemble_bundle_exports_and_predicts_like_one_network(ensemble, tmp_path):
    """The ONNX graph of an ensemble matches PyTorch (export checks it), and the Predictor gives
    the bundle's own probabilities."""
    import onnxruntime

    from rnnlib.modeling.export import example_batch, export_onnx
    from rnnlib.scoring.predictor import Predictor

    _, trained = ensemble
    graph = export_onnx(trained.evaluation.bundle, tmp_path / "model.onnx")
    bundle = load_bundle(trained.evaluation.bundle)
    ids, lengths = example_batch(5, 11, len(bundle.vocab.tokens), seed=2)
    got = onnxruntime.InferenceSession(str(graph)).run(None, {"ids": ids.numpy(), "lengths": lengths.numpy()})[0]
    with torch.no_grad():
        want = bundle.model(ids, lengths).float().softmax(-1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    predicted = Predictor.from_bundle(trained.evaluation.bundle).predict(["great fun plot", "dull mess cast"])
    assert [p.label for p in predicted] == ["pos", "neg"]
