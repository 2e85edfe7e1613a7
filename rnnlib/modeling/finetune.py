"""ULMFiT's fine-tuning (Howard & Ruder 2018) for a classifier whose lower layers start
pretrained: discriminative learning rates (lower layers, which hold the more general features,
change more slowly) and gradual unfreezing (the fresh head learns before its random gradients
reach the pretrained layers). The layers are grouped from the top: the head with the n-gram bag
(both fresh, both feeding the head directly), each recurrent layer from the last, the embedding.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from rnnlib.config import TrainConfig
from rnnlib.modeling.model import RNNClassifier


def layer_groups(network: RNNClassifier) -> list[list[nn.Parameter]]:
    """Every parameter once, in groups from the top of the network to its bottom."""
    top = [*network.head.parameters(), *(network.ngrams.parameters() if network.ngrams else ())]
    recurrent = [list(layer.parameters()) for layer in reversed(network.layers)]
    return [top, *recurrent, list(network.embedding.parameters())]


def optimizer_groups(groups: list[list[nn.Parameter]], cfg: TrainConfig) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: the top at `lr`, each group below at `layer_lr_decay`
    times the rate of the one above."""
    return [{"params": params, "lr": cfg.lr * cfg.layer_lr_decay**depth} for depth, params in enumerate(groups)]


def unfreeze(groups: list[list[nn.Parameter]], epoch: int, cfg: TrainConfig, kept_frozen: set[int]) -> int:
    """Lets the groups that train in `epoch` (from 1) take gradients and stops the others;
    parameters in `kept_frozen` (ids: frozen by configuration, e.g. fixed vectors) never train.
    Returns how many groups train."""
    training = min(epoch, len(groups)) if cfg.gradual_unfreezing else len(groups)
    for depth, params in enumerate(groups):
        for param in params:
            param.requires_grad_(depth < training and id(param) not in kept_frozen)
    return training
