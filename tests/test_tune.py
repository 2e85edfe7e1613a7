"""`rnnlib tune`: a search over the prepared data built once, trials as cached fit stages judged
on the validation split, a study kept in SQLite that a rerun resumes, and a best configuration
that `rnnlib train --config` reproduces exactly."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from rnnlib.config import TrainFlowConfig, load_config
from rnnlib.modeling.pipeline import train_model
from rnnlib.modeling.tune import tune, with_settings
from rnnlib.prepare.pipeline import prepare

WORDS = {"sport": "goal match team coach league", "tech": "chip code cloud data phone"}


def _config(tmp_path: Path, **tune) -> TrainFlowConfig:
    rng = random.Random(0)
    lines = ["text,label"]
    for _ in range(400):
        label = rng.choice(sorted(WORDS))
        noise = rng.choices("the a of to in on at".split(), k=3)
        lines.append(f"{' '.join(rng.choices(WORDS[label].split(), k=2) + noise)},{label}")
    (tmp_path / "news.csv").write_text("\n".join(lines) + "\n")
    return TrainFlowConfig.model_validate(
        {
            "source": {"inputs": [{"path": str(tmp_path / "news.csv")}]},
            "work_dir": str(tmp_path / "work"),
            "preprocess": {"level": "word"},
            "model": {"embedding_dim": 8, "hidden_size": 8},
            "train": {"epochs": 3, "batch_size": 32},
            "evaluate": {"baseline": False, "graph_engines": False},
            "tune": {
                "trials": 3,
                "space": {
                    "model.hidden_size": {"low": 4, "high": 16},
                    "model.dropout": {"low": 0.0, "high": 0.5},
                    "model.pooling": {"choices": ["last", "max"]},
                },
                **tune,
            },
        }
    )


def test_a_search_runs_its_trials_once_and_its_best_config_reproduces(tmp_path):
    config = _config(tmp_path)
    data = prepare(config)
    search = tune(config, data)
    assert len(search.trials) == 3 and all(t.state == "COMPLETE" for t in search.trials)
    assert {tuple(sorted(t.params)) for t in search.trials} == {("model.dropout", "model.hidden_size", "model.pooling")}
    assert all(
        isinstance(t.params["model.hidden_size"], int) and 4 <= t.params["model.hidden_size"] <= 16
        for t in search.trials
    )
    assert search.best.value == max(t.value for t in search.trials)  # accuracy: higher is better
    own = {"model.hidden_size": 8, "model.dropout": config.model.dropout, "model.pooling": config.model.pooling}
    assert search.trials[0].params == own  # the configuration it started from is tried first
    db = Path(config.work_dir) / "tune.db"
    with sqlite3.connect(db) as connection:
        assert connection.execute("select count(*) from trials").fetchone()[0] == 3

    again = tune(config, data)  # the study holds its trials: nothing runs again
    assert [t.model_dump() for t in again.trials] == [t.model_dump() for t in search.trials]
    more = tune(config.model_copy(update={"tune": config.tune.model_copy(update={"trials": 4})}), data)
    assert len(more.trials) == 4 and more.study == search.study

    best = search.config()
    assert best.model.hidden_size == search.best.params["model.hidden_size"]
    fitted = train_model(best)
    assert fitted.fit.cached and fitted.fit.manifest.best_value == search.best.value


def test_another_space_is_another_study(tmp_path):
    config = _config(tmp_path)
    data = prepare(config)
    first = tune(config, data)
    narrower = with_settings(config, {"tune.space": {"model.dropout": {"low": 0.0, "high": 0.1}}})
    assert tune(narrower, data).study != first.study


def test_a_search_refuses_a_language_model_it_cannot_vary():
    from rnnlib.config import ConfigError
    from rnnlib.modeling.tune import searched

    with pytest.raises(ConfigError, match="pretrain.encoder"):
        searched(TrainFlowConfig.model_validate({"pretrain": {"encoder": True}}))
    vectors = searched(TrainFlowConfig.model_validate({"pretrain": {"vectors": True}}))
    assert "model.embedding_dim" not in vectors.tune.space and "model.hidden_size" in vectors.tune.space


def test_a_searched_setting_must_be_one_the_config_has(tmp_path):
    with pytest.raises(Exception, match="hidden_sise"):
        with_settings(_config(tmp_path), {"model.hidden_sise": 3})
    assert load_config(TrainFlowConfig, overrides=["tune.trials=5"]).tune.trials == 5


@pytest.mark.usefixtures("prefect_server")
def test_the_tune_flow_publishes_its_trials_and_writes_a_config_train_reproduces(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from rnnlib.stages import reused
    from rnnlib_flows.tune import tune_flow

    config = _config(tmp_path, trials=2)
    search, trained, path = tune_flow(config)
    assert len(search.trials) == 2 and trained.fit.cached  # the best trial's fit, reused
    reproduced = reused(lambda: train_model(load_config(TrainFlowConfig, path)))
    assert reproduced is not None and reproduced.evaluation == trained.evaluation
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["tune-trials", "tune-summary"]))
        )
    assert {a.key for a in artifacts} == {"tune-trials", "tune-summary"}
    table = next(a for a in artifacts if a.key == "tune-trials")
    assert "validation accuracy" in str(table.data) and "model.pooling" in str(table.data)
