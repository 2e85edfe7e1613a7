"""ULMFiT's fine-tuning schedule: discriminative learning rates and gradual unfreezing, in a
real (small) training run on the surnames."""

from __future__ import annotations

from pathlib import Path

import torch

from rnnlib.common.storage import MANIFEST, read_json
from rnnlib.config import ModelConfig, TrainConfig
from rnnlib.modeling.finetune import layer_groups, optimizer_groups, unfreeze
from rnnlib.modeling.model import RNNClassifier
from rnnlib.modeling.train import LAST, train


def test_groups_hold_every_parameter_once_from_the_top():
    network = RNNClassifier(
        50, 3, ModelConfig(num_layers=2, bidirectional=True, ngrams=2, ngram_buckets=64, head_hidden=8)
    )
    groups = layer_groups(network)
    ids = [id(p) for group in groups for p in group]
    assert sorted(ids) == sorted(id(p) for p in network.parameters())
    assert {id(p) for p in groups[0]} == {id(p) for p in [*network.head.parameters(), *network.ngrams.parameters()]}
    assert [id(p) for p in groups[1]] == [id(p) for p in network.layers[1].parameters()]
    assert [id(p) for p in groups[-1]] == [id(network.embedding.weight)]
    rates = [g["lr"] for g in optimizer_groups(groups, TrainConfig(lr=0.01, layer_lr_decay=0.5))]
    assert rates == [0.01, 0.005, 0.0025, 0.00125]


def test_a_frozen_embedding_stays_frozen_when_its_turn_comes(small_model):
    network = RNNClassifier(50, 3, small_model)
    network.embedding.weight.requires_grad_(False)  # as model.embeddings with freeze: true does
    groups, cfg = layer_groups(network), TrainConfig(gradual_unfreezing=True)
    assert unfreeze(groups, 1, cfg, {id(network.embedding.weight)}) == 1
    assert not any(p.requires_grad for p in network.layers.parameters())
    assert unfreeze(groups, 9, cfg, {id(network.embedding.weight)}) == 3
    assert all(p.requires_grad for p in network.layers.parameters())
    assert not network.embedding.weight.requires_grad


def _initial(tensors: Path, seed: int, model: ModelConfig) -> dict[str, torch.Tensor]:
    """The weights a training run starts from (it seeds, then builds the model)."""
    manifest = read_json(tensors / "train" / MANIFEST)
    torch.manual_seed(seed)
    return RNNClassifier(manifest["vocab_size"], len(manifest["labels"]), model).state_dict()


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each group's largest change: head, recurrent layer, embedding."""
    prefixes = {"head": "head.", "recurrent": "layers.", "embedding": "embedding."}
    return {
        group: max(float((after[k] - before[k]).abs().max()) for k in before if k.startswith(prefix))
        for group, prefix in prefixes.items()
    }


def test_gradual_unfreezing_trains_one_more_group_each_epoch(names_tensors, tmp_path, small_model):
    """Epoch by epoch (each run resumes the last): the head alone, then the recurrent layer too,
    then the embedding too."""
    start = _initial(names_tensors, 0, small_model)
    changed = []
    for epochs in (1, 2, 3):
        summary = train(
            names_tensors,
            out_dir=tmp_path,
            model=small_model,
            cfg=TrainConfig(epochs=epochs, lr=3e-3, patience=10, gradual_unfreezing=True),
        )
        changed.append(_changed(start, torch.load(tmp_path / LAST, weights_only=True)["model"]))
    assert [h["trained_groups"] for h in summary.history] == [1, 2, 3]
    assert changed[0]["head"] > 0 and changed[0]["recurrent"] == changed[0]["embedding"] == 0
    assert changed[1]["recurrent"] > 0 and changed[1]["embedding"] == 0
    assert changed[2]["embedding"] > 0


def test_discriminative_rates_slow_the_lower_layers(names_tensors, tmp_path, small_model):
    """One epoch with every layer at the same rate, one with each layer at a hundredth of the
    rate above it: Adam's steps scale with the rate, so the embedding moves far less."""
    start = _initial(names_tensors, 0, small_model)
    moved = {}
    for decay in (1.0, 0.01):
        out = tmp_path / str(decay)
        train(names_tensors, out_dir=out, model=small_model, cfg=TrainConfig(epochs=1, lr=3e-3, layer_lr_decay=decay))
        moved[decay] = _changed(start, torch.load(out / LAST, weights_only=True)["model"])
    assert moved[0.01]["embedding"] < moved[1.0]["embedding"] / 20
    assert moved[0.01]["recurrent"] < moved[1.0]["recurrent"] / 5
    assert moved[0.01]["head"] > moved[1.0]["head"] / 5
