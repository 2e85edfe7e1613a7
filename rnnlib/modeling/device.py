"""Which device and number format a model runs in: shared by training, evaluation and scoring,
so none of them imports another to find out. Every choice is a function of the device (and,
on a CPU, of what it has), so it is tested for a GPU on machines without one; the GPU-only
lines are the few that act on these choices."""

from __future__ import annotations

import logging
import warnings
from typing import Literal

import torch
from torch import nn

DeviceChoice = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "int8"]
log = logging.getLogger(__name__)


def pick_device(choice: DeviceChoice | str) -> torch.device:
    """`auto`: the GPU when there is one, else the CPU."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); without it bf16 is
    emulated and far slower than fp32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def for_inference(
    model: nn.Module, precision: Precision | str, device: torch.device, native_bf16: bool | None = None
) -> nn.Module:
    """The model in the format to score in: `inference_dtype`'s, or `int8`: the recurrent and
    linear layers' weights quantised to 8 bits (dynamic quantisation; CPU only)."""
    if precision != "int8":
        return model.to(inference_dtype(precision, device, native_bf16))
    if device.type != "cpu":
        raise ValueError(f"precision int8 runs on the CPU only, not on {device.type}")
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated, with no successor for RNNs yet
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.GRU, nn.LSTM, nn.Linear}, dtype=torch.qint8)


def inference_dtype(precision: Precision | str, device: torch.device, native_bf16: bool | None = None) -> torch.dtype:
    """The format to score in. `auto`: bf16 on a GPU and on a CPU with bf16 units, else fp32.
    `bf16` asked for on a CPU without them is honoured, with a warning."""
    if native_bf16 is None:
        native_bf16 = device.type != "cpu" or cpu_has_native_bf16()
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" or native_bf16 else torch.float32
    if precision == "bf16" and device.type == "cpu" and not native_bf16:
        log.warning(
            "precision bf16 on a CPU without bf16 units (%s): much slower than fp32",
            torch.backends.cpu.get_cpu_capability(),
        )
    return torch.bfloat16 if precision == "bf16" else torch.float32


def training_autocast(device: torch.device, mixed_precision: bool) -> torch.dtype | None:
    """bf16 autocast on a GPU when mixed precision is on; full fp32 on a CPU."""
    return torch.bfloat16 if device.type == "cuda" and mixed_precision else None


def default_batch_rows(device: torch.device) -> int:
    """Scoring batch: large on a GPU; small on a CPU, where it is fastest (bench_kernel.py)."""
    return 1024 if device.type == "cuda" else 64
