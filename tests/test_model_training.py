"""Models, training, resumption, distributed training and the model bundle (CPU, small real data)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from rnnlib.config import (
    ModelConfig,
    PreprocessConfig,
    TrainConfig,
    TrainFlowConfig,
)
from rnnlib.errors import InputError
from rnnlib.modeling.batches import ShardBatches
from rnnlib.modeling.bundle import BundleError, load_bundle, save_bundle
from rnnlib.modeling.model import CELLS as CELLS_BY_NAME
from rnnlib.modeling.model import RNNClassifier
from rnnlib.modeling.pipeline import train_model
from rnnlib.modeling.train import BEST, LAST, train
from rnnlib.prepare.vocab import LabelEncoder, Vocabulary

CELLS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]
COMBOS = list(itertools.product(CELLS, [False, True], ["last", "mean", "max", "concat"]))


def _model(cell, bidirectional, pooling, **kw) -> RNNClassifier:
    torch.manual_seed(0)
    unregularised = {"dropout": 0.0, "embedding_dropout": 0.0, **kw}
    cfg = ModelConfig(
        cell=cell,
        bidirectional=bidirectional,
        pooling=pooling,
        embedding_dim=8,
        hidden_size=12,
        num_layers=2,
        **unregularised,
    )
    return RNNClassifier(30, 3, cfg).eval()


@pytest.mark.parametrize("cell,bidirectional,pooling", COMBOS)
def test_padding_never_changes_a_result(cell, bidirectional, pooling):
    model = _model(cell, bidirectional, pooling)
    seqs = [torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10, 11, 12, 13]), torch.tensor([4])]
    alone = torch.cat([model(s[None], torch.tensor([len(s)])) for s in seqs])
    padded = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)
    together = model(padded, torch.tensor([len(s) for s in seqs]))
    assert torch.allclose(alone, together, atol=1e-5)
    # extra padding columns change nothing either
    wider = torch.cat([padded, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    assert torch.allclose(together, model(wider, torch.tensor([len(s) for s in seqs])), atol=1e-5)


@pytest.mark.parametrize("cell,bidirectional", list(itertools.product(CELLS, [False, True])))
def test_matches_pytorch_packed_sequences(cell, bidirectional):
    """Our padded encoder gives what PyTorch's packed multi-layer module gives, and on unpadded
    input packing changes nothing."""
    model = _model(cell, bidirectional, "last")
    reference = CELLS_BY_NAME[cell](
        8,
        12,
        num_layers=2,
        bidirectional=bidirectional,
        batch_first=True,
        **({"nonlinearity": cell.removeprefix("rnn_")} if cell.startswith("rnn") else {}),
    )
    with torch.no_grad():
        for depth, directions in enumerate(model.layers):
            for direction, module in enumerate(directions):
                suffix = "_reverse" if direction else ""
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(reference, f"{name}_l{depth}{suffix}").copy_(getattr(module, f"{name}_l0"))
    ids = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, 0, 0], [11, 12, 0, 0, 0]])
    lengths = torch.tensor([5, 3, 2])
    packed = torch.nn.utils.rnn.pack_padded_sequence(model.embedding(ids), lengths, batch_first=True)
    outputs, _ = torch.nn.utils.rnn.pad_packed_sequence(reference(packed)[0], batch_first=True)
    ours = model.encode(ids, lengths)
    mask = (torch.arange(5)[None, :] < lengths[:, None]).unsqueeze(-1)
    assert torch.allclose(ours * mask, outputs * mask, atol=1e-5)
    unpacked = reference(model.embedding(ids[:1]))[0]
    assert torch.allclose(ours[:1], unpacked, atol=1e-5)


@pytest.mark.parametrize("cell,bidirectional,pooling", COMBOS)
def test_every_variant_learns(cell, bidirectional, pooling):
    torch.manual_seed(1)
    ids = torch.randint(3, 30, (48, 7))
    lengths = torch.randint(2, 8, (48,))
    labels = ids[:, 0] % 3  # the class is in the first token
    model = _model(cell, bidirectional, pooling, head_hidden=16).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(ids, lengths), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("bidirectional", [False, True])
def test_ngram_bag_ignores_padding_and_sees_word_order(bidirectional):
    model = _model("gru", bidirectional, "max", ngrams=3, ngram_buckets=101, ngram_dim=6)
    seqs = [torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10, 11, 12, 13]), torch.tensor([4])]
    alone = torch.cat([model(s[None], torch.tensor([len(s)])) for s in seqs])
    padded = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)
    assert torch.allclose(alone, model(padded, torch.tensor([3, 6, 1])), atol=1e-5)
    bag = model.ngrams
    forward, backward = torch.tensor([[5, 6, 7]]), torch.tensor([[7, 6, 5]])
    lengths = torch.tensor([3])
    assert not torch.allclose(bag(forward, lengths), bag(backward, lengths))  # bigrams differ
    unigrams = _model("gru", bidirectional, "max", ngrams=1, ngram_dim=6).ngrams
    assert torch.allclose(unigrams(forward, lengths), unigrams(backward, lengths))  # a bag of words


def test_ngram_bag_learns_what_only_word_pairs_tell():
    """Each text comes twice, with the same words: once with token 3 right before token 4 (class 1)
    and once with them swapped (class 0). A bag of words cannot tell the two apart; the bag of
    bigrams, with a linear layer on top, learns it."""
    from rnnlib.modeling.model import NgramBag

    torch.manual_seed(2)
    words = torch.randint(5, 30, (32, 6))
    ids = torch.cat([words, words])
    labels = torch.cat([torch.ones(32, dtype=torch.long), torch.zeros(32, dtype=torch.long)])
    ids[:, 1], ids[:, 2] = torch.where(labels == 1, 3, 4), torch.where(labels == 1, 4, 3)
    lengths = torch.full((64,), 6)

    def final_loss(n: int) -> float:
        torch.manual_seed(0)
        bag, head = NgramBag(30, n, 997, 8), torch.nn.Linear(8, 2)
        optimizer = torch.optim.Adam([*bag.parameters(), *head.parameters()], lr=0.05)
        for _ in range(100):
            loss = torch.nn.functional.cross_entropy(head(bag(ids, lengths)), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return loss.item()

    assert final_loss(2) < 0.1 and final_loss(1) > 0.69


def test_embedding_dropout_acts_in_training_only():
    model = _model("gru", True, "max", embedding_dropout=0.5)
    ids, lengths = torch.randint(3, 30, (4, 6)), torch.tensor([6, 5, 3, 1])
    assert torch.equal(model(ids, lengths), model(ids, lengths))  # eval: deterministic
    model.train()
    assert not torch.equal(model(ids, lengths), model(ids, lengths))


def test_unk_dropout_trains_the_unknown_embedding_in_training_only():
    model = _model("lstm", True, "mean", unk_dropout=0.3)
    ids, lengths = torch.randint(3, 30, (16, 6)), torch.full((16,), 6)
    assert torch.equal(model(ids, lengths), _model("lstm", True, "mean")(ids, lengths))  # eval: off
    model.train()
    model(ids, lengths).sum().backward()
    unknown, pad = model.embedding.weight.grad[1], model.embedding.weight.grad[0]
    assert unknown.abs().sum() > 0  # no input token is <UNK>, yet its embedding learns
    assert pad.abs().sum() == 0  # pads are never replaced


@contextmanager
def logged(name: str) -> Iterator[list[str]]:
    """The INFO messages of one logger while the block runs (whatever Prefect did to logging)."""
    logger, messages = logging.getLogger(name), []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_training_streams_shards_and_learns(names_tensors, tmp_path, small_model):
    summary = train(
        names_tensors, out_dir=tmp_path, model=small_model, cfg=TrainConfig(epochs=3, batch_size=64, lr=3e-3)
    )
    assert [h["epoch"] for h in summary.history] == [1, 2, 3]
    assert summary.history[-1]["val_acc"] > 0.6  # majority class is 0.47
    assert (tmp_path / BEST).is_file() and (tmp_path / LAST).is_file()


def test_label_smoothing_is_applied(names_tensors, tmp_path, small_model):
    """With half of each target spread over the 18 classes no prediction can score below the
    smoothed target's entropy (2.03 nats); unsmoothed, one epoch already gets well under it."""
    cfg = TrainConfig(epochs=1, batch_size=64, lr=3e-3, label_smoothing=0.0)
    plain = train(names_tensors, out_dir=tmp_path / "plain", model=small_model, cfg=cfg)
    smoothed = train(
        names_tensors,
        out_dir=tmp_path / "smoothed",
        model=small_model,
        cfg=cfg.model_copy(update={"label_smoothing": 0.5}),
    )
    assert plain.history[0]["val_loss"] < 1.5 < 2.03 < smoothed.history[0]["val_loss"]


def test_batches_are_length_bucketed_and_cover_the_split(names_tensors):
    batches = list(ShardBatches(names_tensors / "train", 64, pool_batches=10, seed=3))
    assert sum(len(b.labels) for b in batches) == 14052
    padding = sum(int((b.ids == 0).sum()) for b in batches)
    lengths = torch.cat([b.lengths for b in batches])
    shuffled = lengths[torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0))]
    random_padding = sum(int((c.max() - c).sum()) for c in shuffled.split(64))
    assert padding < random_padding / 3  # sorted pools: each batch pads to its own short maximum
    again = list(ShardBatches(names_tensors / "train", 64, pool_batches=10, seed=3))
    assert all(torch.equal(a.ids, b.ids) for a, b in zip(batches, again))


def test_resume_after_kill_equals_an_uninterrupted_run(names_tensors, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=64, patience=10, label_smoothing=0.0)
    model = ModelConfig(  # the settings this test has always run (the defaults have changed since)
        cell="lstm",
        embedding_dim=16,
        hidden_size=48,
        dropout=0.2,
        num_layers=2,
        bidirectional=False,
        embedding_dropout=0.0,
        pooling="last",
    )
    straight = train(names_tensors, out_dir=tmp_path / "straight", model=model, cfg=cfg)
    script = (
        "import sys; from rnnlib.config import *; from rnnlib.modeling.train import train; "
        f"train({str(names_tensors)!r}, out_dir={str(tmp_path / 'killed')!r}, "
        f"model=ModelConfig.model_validate_json({model.model_dump_json()!r}), "
        f"cfg=TrainConfig.model_validate_json({cfg.model_dump_json()!r}))"
    )
    process = subprocess.Popen([sys.executable, "-c", script])
    checkpoint = tmp_path / "killed" / LAST
    while not checkpoint.exists():
        assert process.poll() is None, "training ended before its first checkpoint"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = torch.load(checkpoint, weights_only=True)["state"]
    done = saved["epoch"]
    assert done < 3, "the run finished before it could be killed"
    with logged("rnnlib.modeling.train") as messages:
        resumed = train(names_tensors, out_dir=tmp_path / "killed", model=model, cfg=cfg)
    # it went on from the checkpoint: the killed run's epochs are kept as they were (timings
    # included), and only the epochs after them ran again
    assert f"resuming after epoch {done} from {checkpoint}" in messages
    assert resumed.history[:done] == saved["history"]
    ran = [int(m.group(1)) for m in map(re.compile(r"epoch (\d+): train loss").match, messages) if m]
    assert ran == list(range(done + 1, 4))
    # equal up to float summation order (two processes may split CPU reductions differently)
    assert resumed.best_epoch == straight.best_epoch and len(resumed.history) == 3
    for a, b in zip(resumed.history, straight.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    final_a = torch.load(tmp_path / "straight" / LAST, weights_only=True)["model"]
    final_b = torch.load(checkpoint, weights_only=True)["model"]
    assert all(torch.allclose(final_a[k], final_b[k], atol=1e-5) for k in final_a)


def _ddp_rank(rank: int, world: int, port: int, tensors: str, out: str, model: ModelConfig) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    summary = train(tensors, out_dir=out, model=model, cfg=TrainConfig(epochs=1, batch_size=64, device="cpu"))
    model_state = torch.load(Path(out) / LAST, weights_only=True)["model"] if rank == 0 else None
    Path(out, f"rank{rank}.json").write_text(
        json.dumps(
            {
                "world": summary.world_size,
                "epochs": len(summary.history),
                "rows": summary.history[0]["rows"],
                "weights": summary.weights_digest,
            }
        )
    )
    if model_state is not None:
        torch.save(model_state, Path(out) / "rank0-final.pt")


def test_distributed_data_parallel_on_two_gloo_processes(names_tensors, tmp_path, small_model):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(
        _ddp_rank, args=(2, port, str(names_tensors), str(tmp_path), small_model), nprocs=2, join=True
    )
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [(r["world"], r["epochs"]) for r in ranks] == [(2, 1), (2, 1)]
    # together the ranks trained on the split once: each read shards of its own, none twice
    assert ranks[0]["rows"] == ranks[1]["rows"] == 14052
    assert ranks[0]["weights"] == ranks[1]["weights"]  # gradients all-reduced: the same model
    assert (tmp_path / BEST).is_file() and (tmp_path / "rank0-final.pt").is_file()


def test_each_rank_takes_a_gpu_of_its_own_or_says_why_it_cannot(monkeypatch):
    """Under torchrun, rank k of a machine trains on GPU k; a rank without one is told how to
    start the run instead of failing deep in CUDA; CPU ranks stay on the CPU (gloo)."""
    from rnnlib.modeling.train import rank_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert rank_device("cuda") == torch.device("cuda", 0)
    assert rank_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(
        ValueError, match=r"local rank 1 has no GPU of its own \(1 on this machine\).*--nproc-per-node 1"
    ):
        rank_device("cuda")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert rank_device("cuda") == torch.device("cuda")


def test_bundle_round_trip_and_mismatch_refusal(names_tensors, names_data, tmp_path, small_model):
    train(names_tensors, out_dir=tmp_path / "fit", model=small_model, cfg=TrainConfig(epochs=1))
    bundle_dir = tmp_path / "bundle"
    version = save_bundle(
        bundle_dir,
        tmp_path / "fit" / BEST,
        Path(names_data.vocab.path),
        PreprocessConfig(level="char"),
        small_model,
        None,
        {"tensors": "k"},
        {"accuracy": 0.5},
    )
    bundle = load_bundle(bundle_dir)
    assert bundle.version == version and bundle.preprocess.level == "char"
    reference = RNNClassifier(len(bundle.vocab.tokens), len(bundle.labels.labels), small_model).eval()
    reference.load_state_dict(torch.load(tmp_path / "fit" / BEST, weights_only=True))
    ids, lengths = torch.tensor([[5, 6, 7, 0], [8, 9, 10, 11]]), torch.tensor([3, 4])
    assert torch.equal(bundle.model(ids, lengths), reference(ids, lengths))
    # a vocabulary that is not the one the weights were trained with
    Vocabulary(bundle.vocab.tokens + ("extra",)).save(bundle_dir / "vocab.json")
    with pytest.raises(BundleError, match="do not match the bundle's configuration"):
        load_bundle(bundle_dir)
    # ... even when the configuration is edited to agree with it: the weights' shapes disagree
    config = json.loads((bundle_dir / "config.json").read_text())
    config["vocab_hash"] = Vocabulary.load(bundle_dir / "vocab.json").hash
    (bundle_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="weights do not match"):
        load_bundle(bundle_dir)
    # labels: a damaged file, or a valid one that is not the bundle's
    config["vocab_hash"] = bundle.vocab.hash
    (bundle_dir / "config.json").write_text(json.dumps(config))
    Vocabulary(bundle.vocab.tokens).save(bundle_dir / "vocab.json")
    assert load_bundle(bundle_dir).version == version  # whole again
    labels_file = bundle_dir / "labels.json"
    labels_file.write_text(labels_file.read_text().replace(bundle.labels.labels[0], "Klingon"))
    with pytest.raises(InputError, match="label encoder is damaged"):
        load_bundle(bundle_dir)
    LabelEncoder(("Klingon", *bundle.labels.labels[1:])).save(labels_file)
    with pytest.raises(BundleError, match="do not match the bundle's configuration"):
        load_bundle(bundle_dir)
    # weights that are not the bundle's own (same shapes, other values)
    LabelEncoder(bundle.labels.labels).save(labels_file)
    assert load_bundle(bundle_dir).version == version
    weights = bundle_dir / "weights.safetensors"
    original = weights.read_bytes()
    save_file({k: v + 1 for k, v in load_file(weights).items()}, weights)
    with pytest.raises(BundleError, match="not the ones this bundle was written with"):
        load_bundle(bundle_dir)
    assert b"pickle" not in original and not original.startswith(b"PK")  # no zip, no pickle
    weights.unlink()
    with pytest.raises(BundleError, match="weights.safetensors is missing"):
        load_bundle(bundle_dir)


def test_train_model_without_prefect_reuses_what_is_prepared(names_data, datasets, small_model):
    """The library's driver: prepare (served from the work folder the fixture prepared),
    fit, evaluate into a bundle; a second call is served from cache entirely."""
    cfg = TrainFlowConfig.model_validate(
        {
            "source": {"dataset": "names", "mirror": str(datasets)},
            "work_dir": str(Path(names_data.ingest.path).parents[1]),
            "tensorize": {"shard_rows": 2000},
            "model": small_model.model_dump(),
            "train": {"epochs": 1, "lr": 3e-3},
            "evaluate": {"graph_engines": False},
        }
    )
    trained = train_model(cfg)
    data_stages = ["ingest", "preprocess", "split", "vocab", "tensorize"]
    assert {s.stage: s.cached for s in trained.stages} == {
        **dict.fromkeys(data_stages, True),
        "fit": False,
        "baseline": False,
        "evaluate": False,
    }
    assert trained.data.tensorize.key == names_data.tensorize.key
    result = trained.evaluation
    assert result.rows == 3008 and 0.3 < result.accuracy <= 1 and len(trained.history) == 1
    assert (Path(result.bundle) / "metrics.json").is_file() and load_bundle(result.bundle).version == result.version
    again = train_model(cfg)
    assert all(s.cached for s in again.stages) and again.evaluation == result
    # a training setting changed: the data stays, training and evaluation run again
    changed = train_model(cfg.model_copy(update={"train": cfg.train.model_copy(update={"lr": 1e-3})}))
    assert {s.stage: s.cached for s in changed.stages} == {  # the baseline depends on the data only
        **dict.fromkeys(data_stages, True),
        "fit": False,
        "baseline": True,
        "evaluate": False,
    }
    assert changed.evaluation.bundle != result.bundle


@pytest.mark.slow
def test_torchrun_as_the_readme_writes_it(names_tensors, tmp_path):
    """`torchrun --nproc_per_node=N -m rnnlib.modeling.train TENSORS OUT --config FILE.yaml`, with
    2 gloo processes on this CPU: both ranks train, rank 0 writes the best weights, and torchrun
    leaves no worker behind."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    done = subprocess.run(
        [
            torchrun,
            "--nproc_per_node=2",
            f"--master_port={port}",
            "-m",
            "rnnlib.modeling.train",
            str(names_tensors),
            str(tmp_path / "run"),
            "--config",
            "configs/names.yaml",
            "--set",
            "train.epochs=1",
            "--set",
            "model.hidden_size=16",
            "--set",
            "model.embedding_dim=8",
        ],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "best epoch 1" in done.stderr and (tmp_path / "run" / BEST).is_file()
    assert len(re.findall(r"epoch 1: train loss", done.stderr)) == 2  # one line per rank


def test_training_alone_refuses_a_pretraining_it_cannot_run(names_tensors, tmp_path, capsys):
    """The torchrun entry point has no vectors stage: a config asking for one is refused with the
    way to pass the train flow's vectors, not trained from scratch in silence."""
    from rnnlib.modeling.train import main

    with pytest.raises(SystemExit) as refused:
        main(
            [
                str(names_tensors),
                str(tmp_path / "run"),
                "--config",
                str(Path(__file__).resolve().parents[1] / "configs" / "imdb.yaml"),
            ]
        )
    assert refused.value.code == 2 and "model.embeddings={path: .rnnlib/vectors/" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_macro_f1_from_the_confusion_matrix_is_scikit_learns():
    from sklearn.metrics import f1_score

    from rnnlib.modeling.train import macro_f1

    rng = np.random.default_rng(0)
    truth, predicted = rng.integers(0, 5, 300), rng.integers(0, 4, 300)  # class 4 never predicted
    confusion = torch.zeros(5, 5, dtype=torch.float64)
    np.add.at(confusion.numpy(), (truth, predicted), 1)
    expected = f1_score(truth, predicted, average="macro", labels=range(5), zero_division=0)
    assert macro_f1(confusion) == pytest.approx(expected)


@pytest.mark.parametrize(
    "monitor,column,pick", [("loss", "val_loss", min), ("accuracy", "val_acc", max), ("macro_f1", "val_macro_f1", max)]
)
def test_the_best_epoch_is_chosen_by_the_monitored_figure(names_tensors, tmp_path, monitor, column, pick, small_model):
    cfg = TrainConfig(epochs=4, batch_size=256, lr=3e-3, patience=10, monitor=monitor, label_smoothing=0.3)
    summary = train(names_tensors, out_dir=tmp_path, model=small_model, cfg=cfg)
    history = summary.history
    best = pick(history, key=lambda h: h[column])
    assert summary.best_epoch == best["epoch"] and summary.best_value == best[column]
    assert summary.monitor == monitor
    best_weights = torch.load(tmp_path / BEST, weights_only=True)
    last_weights = torch.load(tmp_path / LAST, weights_only=True)["model"]
    same = all(torch.equal(best_weights[k], last_weights[k]) for k in best_weights)
    assert same == (best["epoch"] == 4)


def test_min_steps_train_past_the_epochs(names_tensors, tmp_path, small_model):
    per_epoch = -(-14052 // 1024)  # batches of 1,024 rows
    cfg = TrainConfig(epochs=1, batch_size=1024, min_steps=3 * per_epoch + 1)
    summary = train(names_tensors, out_dir=tmp_path, model=small_model, cfg=cfg)
    assert [h["steps"] for h in summary.history] == [per_epoch] * 4 and summary.steps == 4 * per_epoch
    plain = train(
        names_tensors, out_dir=tmp_path / "plain", model=small_model, cfg=cfg.model_copy(update={"min_steps": 0})
    )
    assert len(plain.history) == 1


@pytest.mark.parametrize(
    "steps,bad_epochs,epoch,going_on",
    [
        (99, 5, 20, True),  # short of min_steps: neither patience nor the epochs end it
        (100, 5, 3, False),  # min_steps done: patience ends it
        (100, 0, 10, False),  # min_steps done: the epochs end it
        (100, 0, 3, True),
    ],
)
def test_early_stopping_waits_for_min_steps(steps, bad_epochs, epoch, going_on):
    from types import SimpleNamespace

    from rnnlib.modeling.train import Run

    cfg = TrainConfig(epochs=10, patience=2, min_steps=100)
    run = SimpleNamespace(cfg=cfg, state={"steps": steps, "bad_epochs": bad_epochs, "epoch": epoch})
    assert Run.going_on(run) is going_on
