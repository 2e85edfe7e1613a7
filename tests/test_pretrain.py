"""Unlabelled text as an input, and word vectors learnt from it before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rnnlib.config import TrainFlowConfig
from rnnlib.modeling.pipeline import train_model
from rnnlib.modeling.pretrain import VECTORS_FILE, TokenLists
from rnnlib.prepare.pipeline import prepare
from rnnlib.prepare.vocab import VOCAB_FILE, Vocabulary

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "movie", "plot", "actor", "scene"]


def _corpus(tmp_path: Path) -> dict:
    """Labelled train and test files (test rows hold a word of their own) and an unlabelled dump."""
    def rows(n: int, extra: str) -> str:
        return "text,label\n" + "".join(
            f"{WORDS[i % 6]} {WORDS[6 + i % 4]} {WORDS[(i * 7) % 10]} {extra},{'pos' if i % 6 < 3 else 'neg'}\n"
            for i in range(n))
    (tmp_path / "train.csv").write_text(rows(90, "trainword"))
    (tmp_path / "test.csv").write_text(rows(30, "testonlyword"))
    (tmp_path / "unsup.jsonl").write_text("".join(
        json.dumps({"text": f"{WORDS[i % 10]} unlabelledonlyword {WORDS[(i * 3) % 10]}"}) + "\n" for i in range(200)))
    return {
        "source": {"inputs": [{"path": str(tmp_path / "train.csv"), "split": "train"},
                              {"path": str(tmp_path / "test.csv"), "split": "test"}],
                   "unlabelled": [{"path": str(tmp_path / "unsup.jsonl")}]},
        "preprocess": {"level": "word"}, "vocab": {"min_freq": 1},
        "model": {"embedding_dim": 8, "hidden_size": 8},
        "pretrain": {"vectors": True, "epochs": 2, "min_count": 1},
        "train": {"epochs": 1}, "evaluate": {"baseline": False}, "work_dir": str(tmp_path / "w"),
    }


def test_unlabelled_text_is_prepared_but_never_split_counted_or_evaluated(tmp_path):
    settings = _corpus(tmp_path)
    data = prepare(TrainFlowConfig.model_validate(settings))
    assert data.unlabelled is not None and data.unlabelled.ingest.manifest["rows"] == 200
    assert data.rows == 120 and data.splits["test"] == 30  # the labelled rows only
    tokens = Vocabulary.load(Path(data.vocab.path) / VOCAB_FILE).tokens
    assert "trainword" in tokens and "unlabelledonlyword" not in tokens and "testonlyword" not in tokens
    texts = list(TokenLists(data.preprocess.path, data.split.path, [data.unlabelled.preprocess.path]))
    words = {w for text in texts for w in text}
    assert "unlabelledonlyword" in words and "trainword" in words
    assert "testonlyword" not in words  # no test text in pretraining
    assert len(texts) == data.splits["train"] + 200

    without = prepare(TrainFlowConfig.model_validate({**settings, "source": {
        **settings["source"], "unlabelled": []}}))
    assert without.unlabelled is None and without.tensorize.key == data.tensorize.key
    assert all(stage.cached for stage in without.stages)  # unlabelled text changes no labelled stage


def test_vectors_stage_feeds_the_embedding_and_is_rebuilt_only_when_its_text_changes(tmp_path):
    settings = _corpus(tmp_path)
    trained = train_model(TrainFlowConfig.model_validate(settings))
    assert trained.vectors is not None and not trained.vectors.cached
    vectors_file = Path(trained.vectors.path) / VECTORS_FILE
    assert vectors_file.read_text().splitlines()[0] == f"{trained.vectors.manifest['vocabulary']} 8"
    assert trained.fit.manifest["initial"]["embeddings"]["coverage"] == 1.0  # subwords cover every token

    again = train_model(TrainFlowConfig.model_validate(settings))
    assert again.vectors.cached and again.fit.cached and again.vectors.key == trained.vectors.key

    with open(tmp_path / "unsup.jsonl", "a") as fh:  # more unlabelled text: new vectors, new model
        fh.write(json.dumps({"text": "great plot more text"}) + "\n")
    changed = train_model(TrainFlowConfig.model_validate(settings))
    assert not changed.vectors.cached and not changed.fit.cached
    assert changed.data.tensorize.cached  # the labelled data did not change


@pytest.mark.usefixtures("prefect_server")
def test_the_train_flow_runs_the_same_stages(tmp_path):
    from rnnlib_flows.train import train_flow

    settings = _corpus(tmp_path)
    library = train_model(TrainFlowConfig.model_validate(settings))
    flow = train_flow(TrainFlowConfig.model_validate(settings))
    assert [(s.stage, s.key, s.cached) for s in flow.stages] == [(s.stage, s.key, True) for s in library.stages]
    assert "vectors" in [s.stage for s in flow.stages] and flow.data.unlabelled is not None
