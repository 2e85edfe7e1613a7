"""Which device a model runs on: shared by training, evaluation and scoring, so none of them
imports another to find out."""

from __future__ import annotations

from typing import Literal

import torch

DeviceChoice = Literal["auto", "cpu", "cuda"]


def pick_device(choice: DeviceChoice | str) -> torch.device:
    """`auto`: the GPU when there is one, else the CPU."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)
