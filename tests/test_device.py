"""Device and number-format choices, for a GPU too: CI has none, so every decision is a function
of the device (and of what a CPU has) and is tested here with the device as a parameter."""

from __future__ import annotations

import logging

import pytest
import torch

from rnnlib.modeling.device import (
    default_batch_rows,
    inference_dtype,
    pick_device,
    training_autocast,
)

CPU, GPU = torch.device("cpu"), torch.device("cuda")


def test_pick_device():
    assert pick_device("cpu") == CPU and pick_device("cuda") == GPU
    assert pick_device("auto") == (GPU if torch.cuda.is_available() else CPU)


@pytest.mark.parametrize(
    "device,native_bf16,expected",
    [
        (GPU, False, torch.bfloat16),
        (CPU, True, torch.bfloat16),  # AVX512-BF16 or AMX
        (CPU, False, torch.float32),  # AVX2 only: bf16 would be emulated, many times slower
    ],
)
def test_auto_precision_follows_the_hardware(device, native_bf16, expected):
    assert inference_dtype("auto", device, native_bf16) == expected


def test_asked_precision_is_honoured_and_a_slow_one_warned_about(caplog):
    assert inference_dtype("fp32", GPU) == torch.float32
    assert inference_dtype("bf16", GPU) == torch.bfloat16
    with caplog.at_level(logging.WARNING, logger="rnnlib.modeling.device"):
        assert inference_dtype("bf16", CPU, native_bf16=True) == torch.bfloat16
        assert not caplog.messages
        assert inference_dtype("bf16", CPU, native_bf16=False) == torch.bfloat16
    assert "without bf16 units" in caplog.text


def test_training_autocasts_on_gpu_only():
    assert training_autocast(GPU, mixed_precision=True) == torch.bfloat16
    assert training_autocast(GPU, mixed_precision=False) is None
    assert training_autocast(CPU, mixed_precision=True) is None


def test_scoring_batch_by_device():
    assert default_batch_rows(CPU) == 64 and default_batch_rows(GPU) == 1024


def test_int8_is_for_the_cpu_only():
    from torch import nn

    from rnnlib.modeling.device import for_inference

    with pytest.raises(ValueError, match="int8 runs on the CPU only"):
        for_inference(nn.Linear(2, 2), "int8", GPU)
    quantised = for_inference(nn.Sequential(nn.Linear(4, 3)), "int8", CPU)
    assert "quantized" in type(quantised[0]).__module__


@pytest.mark.parametrize("native_bf16,expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_number_format_on_either_kind_of_cpu(monkeypatch, native_bf16, expected):
    """What `for_inference`'s auto loads a model in, for both answers of the hardware probe,
    whatever this machine's CPU has."""
    from torch import nn

    from rnnlib.modeling import device

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: native_bf16)
    assert next(device.for_inference(nn.Linear(2, 2), "auto", CPU).parameters()).dtype == expected
    assert next(device.for_inference(nn.Linear(2, 2), "fp32", CPU).parameters()).dtype == torch.float32


def test_every_engine_runs_a_model_with_a_bag_of_ngrams_on_either_kind_of_cpu():
    """Each engine that runs here scores the model, the bag of n-grams included (its average must
    come out in the model's own format), and is compared with fp32 on the rows."""
    import pyarrow as pa

    from rnnlib.config import ModelConfig
    from rnnlib.modeling.inference import choose_engine, engines_for
    from rnnlib.modeling.model import RNNClassifier

    model = RNNClassifier(10, 3, ModelConfig(embedding_dim=4, hidden_size=5, ngrams=2, ngram_buckets=16, ngram_dim=3))
    choice = choose_engine(engines_for(model), pa.array([[2, 3, 4], [5]], pa.list_(pa.int32())), 3, 64)
    assert [t.engine for t in choice.trials] == ["fp32", "bf16", "int8"]  # onnx needs the exported graph
    assert choice.trial("fp32").labels_same == 1.0 and choice.engine in ("fp32", "bf16", "int8")


def test_auto_picks_the_fastest_engine_that_labels_rows_as_fp32_does():
    """The choice is made on measurements: an engine faster than all but unfaithful to fp32 is
    passed over for the fastest faithful one, and the reason says why. Engines of known speed
    and fidelity, so the verdict is the same on every CPU."""
    import time

    import pyarrow as pa

    from rnnlib.modeling.engines import Engine
    from rnnlib.modeling.inference import choose_engine

    def engine(name: str, delay: float, flip: bool) -> Engine:
        def forward(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            time.sleep(delay)
            p = torch.tensor([[0.8, 0.2]]).repeat(len(ids), 1)
            return p.flip(1) if flip else p

        return Engine(name, forward, CPU)

    engines = {
        "fp32": engine("fp32", 0.02, False),
        "int8": engine("int8", 0.0, True),  # fastest, but every label differs
        "onnx": engine("onnx", 0.005, False),
        "bf16": engine("bf16", 0.01, False),
    }
    choice = choose_engine(engines, pa.array([[2, 3]] * 10, pa.list_(pa.int32())), 2, 4)
    assert choice.engine == "onnx" and choice.trial("int8").labels_same == 0.0
    assert choice.reason.startswith("onnx: ") and "too far from fp32: int8 (0.00%)" in choice.reason
