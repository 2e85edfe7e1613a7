"""Unlabelled text as an input, and what is learnt from it before training: word vectors and the
encoder pretrained as a language model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rnnlib.config import ConfigError, ModelConfig, PretrainConfig, TrainFlowConfig
from rnnlib.modeling.card import CARD
from rnnlib.modeling.language_model import (
    ENCODER_FILE,
    LanguageModel,
    batches,
    heldout_perplexity,
    load_encoder,
)
from rnnlib.modeling.model import RNNClassifier
from rnnlib.modeling.pipeline import train_model
from rnnlib.modeling.pretrain import VECTORS_FILE, TokenLists, train_vectors
from rnnlib.prepare.pipeline import prepare
from rnnlib.prepare.specials import SPECIALS
from rnnlib.prepare.vocab import VOCAB_FILE, Vocabulary

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "movie", "plot", "actor", "scene"]


def _corpus(tmp_path: Path) -> dict:
    """Labelled train and test files (test rows hold a word of their own) and an unlabelled dump."""

    def rows(n: int, extra: str) -> str:
        return "text,label\n" + "".join(
            f"{WORDS[i % 6]} {WORDS[6 + i % 4]} {WORDS[(i * 7) % 10]} {extra},{'pos' if i % 6 < 3 else 'neg'}\n"
            for i in range(n)
        )

    (tmp_path / "train.csv").write_text(rows(90, "trainword"))
    (tmp_path / "test.csv").write_text(rows(30, "testonlyword"))
    (tmp_path / "unsup.jsonl").write_text(
        "".join(
            json.dumps({"text": f"{WORDS[i % 10]} unlabelledonlyword {WORDS[(i * 3) % 10]}"}) + "\n" for i in range(200)
        )
    )
    return {
        "source": {
            "inputs": [
                {"path": str(tmp_path / "train.csv"), "split": "train"},
                {"path": str(tmp_path / "test.csv"), "split": "test"},
            ],
            "unlabelled": [{"path": str(tmp_path / "unsup.jsonl")}],
        },
        "preprocess": {"level": "word"},
        "vocab": {"min_freq": 1},
        "model": {"embedding_dim": 8, "hidden_size": 8},
        "pretrain": {"vectors": True, "epochs": 2, "min_words": 0, "min_count": 1},
        "train": {"epochs": 1},
        "evaluate": {"baseline": False, "graph_engines": False},
        "work_dir": str(tmp_path / "w"),
    }


def test_unlabelled_text_is_prepared_but_never_split_counted_or_evaluated(tmp_path):
    settings = _corpus(tmp_path)
    data = prepare(TrainFlowConfig.model_validate(settings))
    assert data.unlabelled is not None and data.unlabelled.ingest.manifest.rows == 200
    assert data.rows == 120 and data.splits["test"] == 30  # the labelled rows only
    tokens = Vocabulary.load(Path(data.vocab.path) / VOCAB_FILE).tokens
    assert "trainword" in tokens and "unlabelledonlyword" not in tokens and "testonlyword" not in tokens
    texts = list(TokenLists(data.preprocess.path, data.split.path, [data.unlabelled.preprocess.path]))
    words = {w for text in texts for w in text}
    assert "unlabelledonlyword" in words and "trainword" in words
    assert "testonlyword" not in words  # no test text in pretraining
    assert len(texts) == data.splits["train"] + 200

    without = prepare(TrainFlowConfig.model_validate({**settings, "source": {**settings["source"], "unlabelled": []}}))
    assert without.unlabelled is None and without.tensorize.key == data.tensorize.key
    assert all(stage.cached for stage in without.stages)  # unlabelled text changes no labelled stage


def test_the_words_of_unlabelled_text_can_follow_the_training_words_in_the_vocabulary(tmp_path):
    settings = _corpus(tmp_path)
    settings["vocab"] = {"min_freq": 1, "unlabelled_min_freq": 100}
    trained = train_model(TrainFlowConfig.model_validate(settings))
    tokens = Vocabulary.load(Path(trained.data.vocab.path) / VOCAB_FILE).tokens
    assert tokens[-1] == "unlabelledonlyword" and "testonlyword" not in tokens  # 200 times: kept, last
    assert trained.data.vocab.manifest.unlabelled_tokens == 1
    assert trained.fit.manifest.initial["embeddings"]["coverage"] == 1.0  # the vectors cover it too

    rare = {**settings, "vocab": {"min_freq": 1, "unlabelled_min_freq": 201}}
    assert (
        "unlabelledonlyword"
        not in Vocabulary.load(Path(prepare(TrainFlowConfig.model_validate(rare)).vocab.path) / VOCAB_FILE).tokens
    )


def test_vectors_stage_feeds_the_embedding_and_is_rebuilt_only_when_its_text_changes(tmp_path):
    settings = _corpus(tmp_path)
    trained = train_model(TrainFlowConfig.model_validate(settings))
    assert trained.vectors is not None and not trained.vectors.cached
    vectors_file = Path(trained.vectors.path) / VECTORS_FILE
    assert vectors_file.read_text().splitlines()[0] == f"{trained.vectors.manifest.vocabulary} 8"
    assert trained.fit.manifest.initial["embeddings"]["coverage"] == 1.0  # subwords cover every token

    again = train_model(TrainFlowConfig.model_validate(settings))
    assert again.vectors.cached and again.fit.cached and again.vectors.key == trained.vectors.key
    reseeded = train_model(TrainFlowConfig.model_validate({**settings, "train": {"epochs": 1, "seed": 1}}))
    assert reseeded.vectors.cached and not reseeded.fit.cached  # seeds of a recipe share its vectors
    other = train_model(TrainFlowConfig.model_validate({**settings, "pretrain": {**settings["pretrain"], "seed": 1}}))
    assert not other.vectors.cached

    assert trained.vectors.manifest.epochs == 2
    reading = {**settings["pretrain"], "min_words": 10 * trained.vectors.manifest.words}  # a small text: more passes
    longer = train_model(TrainFlowConfig.model_validate({**settings, "pretrain": reading}))
    assert not longer.vectors.cached and longer.vectors.manifest.epochs == 10

    with open(tmp_path / "unsup.jsonl", "a") as fh:  # more unlabelled text: new vectors, new model
        fh.write(json.dumps({"text": "great plot more text"}) + "\n")
    changed = train_model(TrainFlowConfig.model_validate(settings))
    assert not changed.vectors.cached and not changed.fit.cached
    assert changed.data.tensorize.cached  # the labelled data did not change

    fit_options = {**settings["pretrain"], "freeze": True, "encoder": True}  # read by later stages only
    later = train_model(TrainFlowConfig.model_validate({**settings, "pretrain": fit_options}))
    assert later.vectors.cached and later.vectors.key == changed.vectors.key and not later.fit.cached


def test_each_network_of_an_ensemble_learns_its_own_vectors(tmp_path):
    """A seed ensemble averages over the draw of the vectors too: network i starts from vectors
    seeded pretrain.seed + i, and is the single model of train.seed + i and pretrain.seed + i."""
    settings = _corpus(tmp_path)
    settings["pretrain"] = {**settings["pretrain"], "seed": 5}
    trained = train_model(TrainFlowConfig.model_validate({**settings, "model": {**settings["model"], "ensemble": 2}}))
    first, second = trained.vectors_sets
    assert trained.vectors == first and first.key != second.key
    assert (Path(first.path) / VECTORS_FILE).read_bytes() != (Path(second.path) / VECTORS_FILE).read_bytes()
    assert [m.pretrain_seed for m in trained.evaluation.ensemble] == [5, 6]
    assert (
        "its own pretraining (word vectors, language model: seeds 5 to 6)"
        in (Path(trained.evaluation.bundle) / CARD).read_text()
    )

    alone = train_model(
        TrainFlowConfig.model_validate(
            {**settings, "pretrain": {**settings["pretrain"], "seed": 6}, "train": {"epochs": 1, "seed": 1}}
        )
    )
    assert alone.vectors.cached and alone.vectors.key == second.key
    assert alone.fit.cached and alone.fit.key == trained.fits[1].key


def test_the_same_text_and_seed_learn_the_same_vectors(tmp_path):
    """Threads interleave their updates differently on each run; one thread (the default) does not,
    so a recipe's figures are reproducible and its seeds differ only by their seeds."""
    settings = _corpus(tmp_path)
    with open(tmp_path / "unsup.jsonl", "w") as fh:  # several of gensim's jobs an epoch, for threads to share
        for i in range(6000):
            fh.write(json.dumps({"text": " ".join(WORDS[(i * k) % 10] for k in range(1, 9))}) + "\n")
    data = prepare(TrainFlowConfig.model_validate(settings))
    cfg = PretrainConfig(vectors=True, epochs=2, min_words=0, min_count=1)
    learnt = []
    for run in ("first", "second"):
        train_vectors(
            data.preprocess.path,
            data.split.path,
            data.vocab.path,
            [data.unlabelled.preprocess.path],
            out_dir=tmp_path / run,
            cfg=cfg,
            dim=8,
            seed=0,
        )
        learnt.append((tmp_path / run / VECTORS_FILE).read_text())
    assert learnt[0] == learnt[1]


@pytest.mark.usefixtures("prefect_server")
def test_the_train_flow_runs_the_same_stages(tmp_path):
    from rnnlib_flows.train import train_flow

    settings = _corpus(tmp_path)
    library = train_model(TrainFlowConfig.model_validate(settings))
    flow = train_flow(TrainFlowConfig.model_validate(settings))
    assert [(s.stage, s.key, s.cached) for s in flow.stages] == [(s.stage, s.key, True) for s in library.stages]
    assert "vectors" in [s.stage for s in flow.stages] and flow.data.unlabelled is not None


def _encoder_settings(tmp_path: Path) -> dict:
    settings = _corpus(tmp_path)
    return {
        **settings,
        "model": {"embedding_dim": 8, "hidden_size": 8, "bidirectional": True},
        "pretrain": {"encoder": True, "encoder_epochs": 2, "encoder_lr": 0.02, "heldout_every": 10},
        "train": {"epochs": 1, "batch_size": 8},
    }


def test_the_encoder_is_pretrained_as_a_language_model_and_starts_the_classifier(tmp_path):
    settings = _encoder_settings(tmp_path)
    trained = train_model(TrainFlowConfig.model_validate(settings))
    lm = trained.language_model.manifest
    assert lm.texts + lm.heldout_texts == trained.data.splits["train"] + 200  # no test text
    assert [h["epoch"] for h in lm.history] == [1, 2]
    assert lm.history[-1]["heldout_perplexity"] < 0.5 * lm.untrained_perplexity
    assert trained.fit.manifest.initial["encoder"]["tensors"] == 2 * 4 + 1  # embedding, 2 directions of 4 tensors

    config = TrainFlowConfig.model_validate(settings).model
    network = RNNClassifier(trained.data.vocab.manifest.vocab_size, 2, config)
    load_encoder(network, str(Path(trained.language_model.path) / ENCODER_FILE))
    weights = load_file(Path(trained.language_model.path) / ENCODER_FILE)
    assert all(torch.equal(network.state_dict()[k], v) for k, v in weights.items())
    assert {k.split(".")[0] for k in weights} == {"embedding", "layers"}  # never the head

    wider = RNNClassifier(trained.data.vocab.manifest.vocab_size, 2, config.model_copy(update={"hidden_size": 9}))
    with pytest.raises(ConfigError, match="do not fit this model"):
        load_encoder(wider, str(Path(trained.language_model.path) / ENCODER_FILE))


def test_the_language_model_is_rebuilt_only_when_what_it_reads_changes(tmp_path):
    settings = _encoder_settings(tmp_path)
    first = train_model(TrainFlowConfig.model_validate(settings))
    again = train_model(TrainFlowConfig.model_validate(settings))
    assert again.language_model.cached and again.fit.cached
    head = train_model(
        TrainFlowConfig.model_validate(
            {
                **settings,
                "model": {**settings["model"], "head_hidden": 4},
                "train": {"epochs": 1, "batch_size": 8, "lr": 0.01},
            }
        )
    )
    assert head.language_model.key == first.language_model.key and head.language_model.cached
    assert not head.fit.cached
    reseeded = train_model(TrainFlowConfig.model_validate({**settings, "train": {**settings["train"], "seed": 1}}))
    assert reseeded.language_model.cached and not reseeded.fit.cached
    longer = train_model(
        TrainFlowConfig.model_validate({**settings, "pretrain": {**settings["pretrain"], "encoder_epochs": 3}})
    )
    assert not longer.language_model.cached and not longer.fit.cached
    sampled = train_model(
        TrainFlowConfig.model_validate({**settings, "pretrain": {**settings["pretrain"], "encoder_max_texts": 100}})
    )
    assert sampled.language_model.manifest.texts + sampled.language_model.manifest.heldout_texts == 100
    with pytest.raises(ConfigError, match="bidirectional"):
        train_model(TrainFlowConfig.model_validate({**settings, "model": {**settings["model"], "num_layers": 2}}))


def test_the_language_model_cannot_see_the_token_it_predicts():
    """On independent random tokens nothing beats guessing: a model that saw the token it predicts
    would learn to copy it and reach a perplexity near 1."""
    vocab, rng = 24, np.random.default_rng(0)
    texts = [rng.integers(len(SPECIALS), vocab, size=rng.integers(5, 30)).astype(np.int32) for _ in range(400)]
    torch.manual_seed(0)
    lm = LanguageModel(vocab, ModelConfig(embedding_dim=16, hidden_size=32, bidirectional=True))
    optimizer = torch.optim.Adam(lm.parameters(), lr=0.01)
    for _ in range(3):
        for ids, lengths in batches(texts[:300], 32, 2, rng):
            loss, n = lm(ids, lengths)
            optimizer.zero_grad()
            (loss / n).backward()
            optimizer.step()
    guessing = vocab - len(SPECIALS)
    assert heldout_perplexity(lm, texts[300:], 64, torch.device("cpu")) > 0.8 * guessing


def test_a_killed_language_model_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, caplog):
    """Killed after its first epoch's checkpoint, the stage started again resumes from it and
    ends with the weights an uninterrupted run has: the dropout masks of the resumed epochs come
    from the restored random generator (`rnnlib.modeling.checkpoint`)."""
    from rnnlib.config import PretrainConfig
    from rnnlib.modeling import language_model

    settings = _encoder_settings(tmp_path)
    data = prepare(TrainFlowConfig.model_validate(settings))
    model = ModelConfig(embedding_dim=8, hidden_size=8, bidirectional=True, embedding_dropout=0.3, dropout=0.3)
    cfg = PretrainConfig(encoder=True, encoder_epochs=3, encoder_lr=0.02, heldout_every=10)

    def pretrain(out: Path) -> dict:
        return language_model.pretrain_encoder(
            data.preprocess.path, data.split.path, data.vocab.path, [data.unlabelled.preprocess.path],
            out_dir=out, model=model, cfg=cfg, max_length=None, batch_size=8, seed=0,
        )  # fmt: skip

    straight = pretrain(tmp_path / "straight")
    measured = language_model.heldout_perplexity
    calls = []

    def killed_in_epoch_two(*args, **kwargs):  # calls: untrained, epoch 1, epoch 2
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return measured(*args, **kwargs)

    monkeypatch.setattr(language_model, "heldout_perplexity", killed_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tmp_path / "killed")
    monkeypatch.setattr(language_model, "heldout_perplexity", measured)
    with caplog.at_level("INFO", logger="rnnlib.modeling.language_model"):
        resumed = pretrain(tmp_path / "killed")
    assert "resuming the language model after epoch 1" in caplog.text  # not started afresh
    timing = {"seconds", "tokens_per_s"}
    assert [{k: v for k, v in h.items() if k not in timing} for h in resumed.history] == [
        {k: v for k, v in h.items() if k not in timing} for h in straight.history
    ]
    assert [h["heldout_perplexity"] for h in resumed.history] == [h["heldout_perplexity"] for h in straight.history]
    a, b = load_file(tmp_path / "straight" / ENCODER_FILE), load_file(tmp_path / "killed" / ENCODER_FILE)
    assert all(torch.equal(a[k], b[k]) for k in a)
