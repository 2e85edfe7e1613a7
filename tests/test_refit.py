"""Refit (`train.refit`): after the best epoch is chosen on validation, the model is trained again
on train + validation for that many epochs at the chosen run's rates, its linear half fitted again
with the chosen C; the bundle holds the refit model, the card and metrics say so beside the chosen
fit's test figure, and toggling it reuses the fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from sklearn.feature_extraction.text import TfidfTransformer

from rnnlib.common.storage import read_json
from rnnlib.config import TrainFlowConfig
from rnnlib.modeling.bundle import METRICS, load_bundle
from rnnlib.modeling.pipeline import train_model
from rnnlib.modeling.train import BEST, FitManifest, replayed_rates
from rnnlib.modeling.wide import REFIT_WIDE_FILE, WIDE_FILE, counts
from rnnlib_flows.render import evaluation_summary
from tests.test_wide import _headlines


@pytest.fixture(scope="module")
def refitted(tmp_path_factory):
    work = tmp_path_factory.mktemp("refit")
    _headlines(work / "d.csv")
    config = TrainFlowConfig.model_validate(
        {
            "source": {"inputs": [{"path": str(work / "d.csv")}]},
            "preprocess": {"level": "word"},
            "work_dir": str(work / "w"),
            "model": {"cell": "gru", "embedding_dim": 16, "hidden_size": 16, "wide": True},
            "train": {"epochs": 3, "batch_size": 32, "refit": True, "lr_patience": 0, "lr": 0.01},
            "evaluate": {"graph_engines": False},
        }
    )
    return config, train_model(config)


def test_the_refit_trains_on_train_and_validation_for_the_chosen_epochs(refitted):
    config, trained = refitted
    fit, refit = trained.fit.manifest, trained.refit.manifest
    splits = trained.data.splits
    assert refit.epochs == fit.best_epoch == len(refit.history)
    assert refit.rows == splits["train"] + splits["val"]
    assert all(record["rows"] == splits["train"] + splits["val"] for record in refit.history)
    assert all(record["rows"] == splits["train"] for record in fit.history)
    rates = [record["lr"] for record in refit.history]
    assert rates == pytest.approx([config.train.lr * share for share in replayed_rates(fit, config.train.lr)])


def test_replayed_rates_follow_the_chosen_runs_plateau_steps():
    """Epoch e trained at the rate recorded after epoch e - 1; only the kept epochs are replayed."""
    history = [{"epoch": e, "lr": lr} for e, lr in enumerate([0.01, 0.005, 0.005, 0.0025], start=1)]
    fit = FitManifest.model_construct(history=history, best_epoch=3)
    assert replayed_rates(fit, 0.01) == pytest.approx([1.0, 1.0, 0.5])


def test_the_bundle_holds_the_refit_model_and_says_so(refitted):
    _, trained = refitted
    evaluation = trained.evaluation
    bundle = load_bundle(evaluation.bundle)
    state = bundle.model.state_dict()
    refit_weights = torch.load(Path(trained.refit.path) / BEST, weights_only=True)
    fit_weights = torch.load(Path(trained.fit.path) / BEST, weights_only=True)
    for name, tensor in refit_weights.items():
        torch.testing.assert_close(state[name], tensor)
    assert any(not torch.equal(fit_weights[name], tensor) for name, tensor in refit_weights.items())
    wide = load_file(str(Path(trained.wide.path) / REFIT_WIDE_FILE))
    for name, tensor in wide.items():
        torch.testing.assert_close(state[f"wide.{name}"], tensor)
    assert float(bundle.model.blend) == pytest.approx(evaluation.blend.weight)
    assert evaluation.refit is not None and evaluation.refit.rows == trained.refit.manifest.rows
    assert 0.0 <= evaluation.refit.chosen_test_accuracy <= 1.0
    assert read_json(Path(evaluation.bundle) / METRICS)["refit"] == evaluation.refit.model_dump(mode="json")
    card = (Path(evaluation.bundle) / "README.md").read_text()
    assert "## Refit on train + validation" in card
    assert f"for {trained.refit.manifest.epochs} epochs" in card
    summary = evaluation_summary(evaluation)  # what the train command prints and publishes
    assert any(f"before it: accuracy {evaluation.refit.chosen_test_accuracy:.4f}" in line for line in summary)


def test_the_refit_linear_half_is_fitted_on_train_and_validation(refitted):
    """Its idf is that of the train and validation rows together; the half the blend was chosen
    with, of the training rows alone."""
    config, trained = refitted
    data, buckets = trained.data, config.model.ngram_buckets
    rows = {
        split: pq.read_table(Path(data.tensorize.path) / split)["ids"].combine_chunks() for split in ("train", "val")
    }
    for file, fitted_on in ((WIDE_FILE, [rows["train"]]), (REFIT_WIDE_FILE, [rows["train"], rows["val"]])):
        idf = TfidfTransformer().fit(counts(pa.concat_arrays(fitted_on), data.vocab_size, buckets)).idf_
        saved = load_file(str(Path(trained.wide.path) / file))["idf_squared"].double().numpy()
        np.testing.assert_allclose(saved, idf**2, rtol=1e-5)


def test_the_baseline_is_fitted_again_on_the_same_rows_as_the_model(refitted):
    """Beside a refit model, the TF-IDF + LR baseline is refit too: the comparison stays on the
    same training rows, and the card says which."""
    _, trained = refitted
    splits, baseline = trained.data.splits, trained.evaluation.baseline
    assert baseline.refit and baseline.train_rows == splits["train"] + splits["val"]
    card = (Path(trained.evaluation.bundle) / "README.md").read_text()
    assert f"{baseline.train_rows} training and validation rows" in card


def test_toggling_refit_reuses_the_fit(refitted):
    config, trained = refitted
    plain = train_model(config.model_copy(update={"train": config.train.model_copy(update={"refit": False})}))
    assert plain.fit.cached and plain.fit.key == trained.fit.key
    assert plain.refit is None and plain.evaluation.refit is None
    assert not plain.evaluation.baseline.refit and plain.evaluation.baseline.train_rows == trained.data.splits["train"]
    assert plain.evaluate.key != trained.evaluate.key
