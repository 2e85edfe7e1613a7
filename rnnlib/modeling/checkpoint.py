"""Checkpoints of a training loop, written once for every loop (the classifier's fit and the
language model's pretraining): the model, the optimizer, the scheduler, the random number
generators and the loop's own state, written atomically. A run killed and started again resumes
from the last one and ends where an uninterrupted run would have: dropout draws its masks from
the restored generator, so the resumed epochs are the ones the run would have trained."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from rnnlib.common.storage import durable_replace


def save_atomically(value: Any, path: Path) -> None:
    """`torch.save` under a temporary name, then renamed: a kill never leaves half a file."""
    tmp = path.with_suffix(".tmp")
    torch.save(value, tmp)
    durable_replace(tmp, path)


def save_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    device: torch.device,
    scheduler: Any = None,
) -> None:
    """Everything a resume needs, in one file written atomically."""
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": torch.get_rng_state(),
        "state": state,
    }
    if scheduler is not None:
        checkpoint["scheduler"] = scheduler.state_dict()
    if device.type == "cuda":  # dropout on a GPU draws from its own generator
        checkpoint["cuda_rng"] = torch.cuda.get_rng_state(device)
    save_atomically(checkpoint, path)


def load_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    scheduler: Any = None,
) -> dict[str, Any] | None:
    """Restore what `save_checkpoint` wrote into the objects given; returns the loop's state, or
    None when there is no checkpoint to resume from."""
    if not path.is_file():
        return None
    # on the CPU: generator states must stay CPU byte tensors; the weights and the optimizer's
    # state are copied to the model's device as they are loaded
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
    torch.set_rng_state(checkpoint["rng"])
    if device.type == "cuda" and "cuda_rng" in checkpoint:
        torch.cuda.set_rng_state(checkpoint["cuda_rng"], device)
    return checkpoint["state"]
