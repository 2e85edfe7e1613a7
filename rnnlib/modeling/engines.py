"""What runs a bundle's model to probabilities when scoring, behind one interface:

    fp32, bf16, int8   PyTorch (int8: the recurrent and linear layers' weights quantised to 8
                       bits by dynamic quantisation; CPU only)
    onnx               ONNX Runtime on the graph `rnnlib export` writes (fp32; CPU only)
    onnx-int8          the same graph with its LSTM and linear weights quantised to 8 bits by
                       ONNX Runtime's dynamic quantisation (it has no 8-bit GRU: a GRU's
                       recurrent weights stay fp32; CPU only)
    openvino           OpenVINO on the same graph, compiled for this CPU (fused recurrent kernels;
    openvino-bf16      fp32, or bf16 where OpenVINO supports it on the CPU: where it does not, as
                       on AVX2 CPUs, OpenVINO runs it in fp32; CPU only)

No engine wins everywhere: bf16 is fast on a CPU with bf16 units and far slower than fp32 without
them, and ONNX Runtime's and OpenVINO's recurrent kernels beat PyTorch's on some CPUs. So `auto` is chosen by
measurement (`rnnlib.modeling.inference.choose_engine`), once per machine and bundle.
"""

from __future__ import annotations

import importlib.metadata
import platform
import threading
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import get_args

import torch

from rnnlib.config import EngineName
from rnnlib.modeling.device import for_inference, pick_device

ENGINES: tuple[str, ...] = tuple(name for name in get_args(EngineName) if name != "auto")
GRAPH_ENGINES = ("onnx", "onnx-int8", "openvino", "openvino-bf16")  # run on a graph exported from the bundle
OPENVINO_ENGINES = ("openvino", "openvino-bf16")
CPU_ONLY_ENGINES = ("int8", *GRAPH_ENGINES)
# a probability table, rows x classes, from padded ids (batch x steps, int64) and lengths (batch)
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Engine:
    """A model run by one engine: a batch of padded ids and lengths -> probabilities."""

    def __init__(self, name: str, forward: Forward, device: torch.device) -> None:
        self.name, self.forward, self.device = name, forward, device

    def __call__(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.forward(ids, lengths)


def torch_engine(model: torch.nn.Module, name: str = "fp32") -> Engine:
    """The model in PyTorch, in the number format `name` (fp32, bf16 or int8; "as is": left in
    its own), converted in place."""
    device = next(model.parameters()).device
    if name != "as is":  # native_bf16: asked for by name, it is measured or chosen knowingly; no warning
        model = for_inference(model, name, device, native_bf16=True)
    return Engine(name, lambda ids, lengths: model(ids, lengths).float().softmax(1), device)


def onnx_engine(graph: str | Path, name: str = "onnx") -> Engine:
    """An ONNX graph (`rnnlib export`'s, or its 8-bit version for onnx-int8) in ONNX Runtime,
    on the CPU, with as many threads as PyTorch uses in this process (one per Dask worker)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

    def forward(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        (probabilities,) = session.run(None, {"ids": ids.numpy(), "lengths": lengths.numpy()})
        return torch.from_numpy(probabilities)

    return Engine(name, forward, torch.device("cpu"))


def openvino_engine(graph: str | Path, name: str = "openvino") -> Engine:
    """The exported ONNX graph compiled by OpenVINO for this CPU, in fp32 or (openvino-bf16) bf16,
    with as many threads as PyTorch uses in this process and no pinning to cores (two workers
    on one machine would otherwise pin to the same ones). fp32 is asked for explicitly: on a
    CPU with bf16 units OpenVINO would otherwise run bf16."""
    import openvino

    core = openvino.Core()
    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if name == "openvino-bf16" else "f32",
        "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        "NUM_STREAMS": 1,
        "ENABLE_CPU_PINNING": False,
    }
    compiled = core.compile_model(core.read_model(str(graph)), "CPU", config)
    request, output = compiled.create_infer_request(), compiled.output(0)
    lock = threading.Lock()  # an infer request runs one batch at a time

    def forward(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        with lock:
            result = request.infer({"ids": ids.numpy(), "lengths": lengths.numpy()})
            return torch.from_numpy(result[output].copy())  # the request reuses its buffers

    return Engine(name, forward, torch.device("cpu"))


def graph_engine(graph: str | Path, name: str) -> Engine:
    """The engine `name` of GRAPH_ENGINES on an exported graph."""
    return openvino_engine(graph, name) if name in OPENVINO_ENGINES else onnx_engine(graph, name)


def engine_device(choice: str, engine: str) -> torch.device:
    """Where `engine` runs: on the device asked for; with `auto`, on the GPU when there is one,
    except the engines that run on the CPU only (int8, the graph engines), which stay there."""
    if choice == "auto" and engine in CPU_ONLY_ENGINES:
        return torch.device("cpu")
    return pick_device(choice)


def available_engines(device: torch.device) -> list[str]:
    """The engines that can run here: on a GPU, PyTorch's fp32 and bf16; on a CPU PyTorch's
    three, onnx and onnx-int8 when ONNX Runtime is installed (it checks every exported graph),
    and with OpenVINO too openvino, and openvino-bf16 where OpenVINO supports bf16 on the CPU."""
    if device.type != "cpu":
        return ["fp32", "bf16"]
    names = ["fp32", "bf16", "int8"]
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return names
    names += ["onnx", "onnx-int8"]
    try:
        import openvino
    except ImportError:
        return names
    bf16 = "BF16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return names + ["openvino"] + (["openvino-bf16"] if bf16 else [])


def machine() -> dict[str, str]:
    """What an engine's speed depends on besides the model: the CPU and the libraries."""
    return {
        "cpu": cpu_name(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime"),
        "openvino": _version("openvino"),
        "threads": str(torch.get_num_threads()),
    }


def _version(package: str) -> str:
    """The installed version of `package`, or "none" (read without importing it)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


@lru_cache(maxsize=1)
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
