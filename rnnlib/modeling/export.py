"""A bundle's model exported to ONNX, for serving without Python or PyTorch.

The graph takes `ids` (int64, batch x steps, padded with 0 to the batch's longest row) and
`lengths` (int64, batch) and returns `probabilities` (float32, batch x labels); batch and steps
are dynamic. The file's metadata carries the labels (in output order), the bundle's version and
maximum length. Turning text into ids is the consumer's job: the bundle's `config.json`
(`preprocess`) and `vocab.json` say exactly how.

Every export is checked before it is kept: the file is run in ONNX Runtime on a batch of another
shape and must match PyTorch within `tolerance`. `quantise_onnx` makes the 8-bit graph the
onnx-int8 scoring engine runs.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rnnlib.common.storage import durable_replace
from rnnlib.errors import InputError
from rnnlib.modeling.bundle import Bundle, load_bundle
from rnnlib.prepare.specials import PAD_ID, SPECIALS


class ExportError(InputError):
    """A bundle whose model cannot be exported faithfully."""


class Probabilities(nn.Module):
    """The classifier with a softmax on top: what a serving system wants back."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.model(ids, lengths).float().softmax(-1)


def example_batch(rows: int, steps: int, vocab_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids padded like a real batch: the first row full, the others shorter."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, steps + 1, (rows,), generator=generator)
    lengths[0] = steps
    ids = torch.randint(len(SPECIALS), vocab_size, (rows, steps), generator=generator)
    ids[torch.arange(steps)[None, :] >= lengths[:, None]] = PAD_ID
    return ids, lengths


def _export(module: nn.Module, bundle: Bundle, vocab_size: int, path: Path) -> None:
    """The traced graph, its metadata set, saved whole (weights inline) at `path`."""
    import onnx

    batch, steps = torch.export.Dim("batch"), torch.export.Dim("steps")
    with torch.no_grad():
        torch.onnx.export(
            module,
            example_batch(3, 9, vocab_size, seed=0),
            path,
            dynamo=True,
            input_names=["ids", "lengths"],
            output_names=["probabilities"],
            dynamic_shapes=({0: batch, 1: steps}, {0: batch}),
            verbose=False,
        )
    graph = onnx.load(path)
    onnx.helper.set_model_props(
        graph,
        {
            "labels": json.dumps(list(bundle.labels.labels)),
            "rnnlib_bundle_version": bundle.version,
            "max_length": str(bundle.max_length or ""),
            "vocab_hash": bundle.vocab.hash,
        },
    )
    onnx.save(graph, path)


def trace_in_own_process(bundle_dir: str | Path, path: Path) -> None:
    """`_export` of the bundle's model, run in a fresh Python process: torch's exporter fixes the
    sequence length of every export after the first in a process (seen with torch 2.13), so
    each export traces where none has before."""
    script = (
        "import sys; from rnnlib.modeling.bundle import load_bundle; from rnnlib.modeling import export as e; "
        "b = load_bundle(sys.argv[1]); e._export(e.Probabilities(b.model).eval(), b, len(b.vocab.tokens), "
        "e.Path(sys.argv[2]))"
    )
    done = subprocess.run([sys.executable, "-c", script, str(bundle_dir), str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise ExportError(f"the model could not be traced: {done.stderr.strip()[-500:]}", file=str(bundle_dir))


def export_onnx(bundle_dir: str | Path, out: str | Path, tolerance: float = 1e-4) -> Path:
    """Write the bundle's model as ONNX to `out` (atomically), checked against PyTorch."""
    import onnxruntime

    bundle = load_bundle(bundle_dir)
    module = Probabilities(bundle.model).eval()
    vocab_size = len(bundle.vocab.tokens)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # a scratch folder of its own beside `out`: two exports of one output never collide, and the
    # exporter's side files (weights written as external data) go with the folder
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
        tmp = Path(scratch) / out.name
        trace_in_own_process(bundle_dir, tmp)
        ids, lengths = example_batch(7, 23, vocab_size, seed=1)  # another shape than the traced one
        try:
            got = onnxruntime.InferenceSession(str(tmp)).run(None, {"ids": ids.numpy(), "lengths": lengths.numpy()})[0]
        except Exception as exc:  # noqa: BLE001 - any failure means the graph is not usable
            raise ExportError(
                f"the exported graph does not run on other shapes ({bundle.model.cfg.cell} cells "
                f"export with a fixed length; gru and lstm export in full): {exc}",
                file=str(bundle_dir),
            ) from exc
        with torch.no_grad():
            want = module(ids, lengths).numpy()
        if not np.allclose(got, want, atol=tolerance):
            raise ExportError(
                f"the exported graph differs from PyTorch by {np.abs(got - want).max():.2e}", file=str(bundle_dir)
            )
        durable_replace(tmp, out)
    return out


def quantise_onnx(graph: str | Path, out: str | Path) -> Path:
    """`graph` with its LSTM and linear weights in 8 bits (ONNX Runtime's dynamic quantisation:
    activations are quantised batch by batch, so no calibration data is needed), written
    atomically to `out`. The exporter folds only small constants: a larger LSTM's weights are
    computed in the graph (its gates reordered), where the quantiser leaves them in fp32, so
    ONNX Runtime's pre-processing folds them first."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
        folded, tmp = Path(scratch) / "folded.onnx", Path(scratch) / out.name
        quant_pre_process(graph, folded, skip_symbolic_shape=True)  # the shapes are dynamic anyway
        # 7-bit weights: without VNNI units the 8-bit kernels can saturate, and the graph may be
        # made on one CPU and run on another
        with _quiet_about_tensors_left_unquantised():
            quantize_dynamic(folded, tmp, weight_type=QuantType.QInt8, reduce_range=True)
        durable_replace(tmp, out)
    return out


LEFT_UNQUANTISED = "Inference failed or unsupported type to quantize"


@contextmanager
def _quiet_about_tensors_left_unquantised() -> Iterator[None]:
    """ONNX Runtime's quantiser warns, on the root logger and a dozen lines each, for every
    tensor that is not a float: a wide-and-deep graph's masks and indices, which it rightly leaves
    as they are. Those warnings alone are dropped while it runs; any other still shows."""

    def shown(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(LEFT_UNQUANTISED)

    root = logging.getLogger()
    root.addFilter(shown)
    try:
        yield
    finally:
        root.removeFilter(shown)


def engine_graph(bundle_dir: str | Path, engine: str, onnx: Path) -> Path:
    """The graph `engine` runs: the bundle exported to `onnx` (reused when it is there), or for
    onnx-int8 that graph quantised beside it (likewise)."""
    exported = onnx if onnx.is_file() else export_onnx(bundle_dir, onnx)
    if engine != "onnx-int8":
        return exported
    quantised = onnx.with_name(f"{onnx.stem}-int8.onnx")
    return quantised if quantised.is_file() else quantise_onnx(exported, quantised)


def exported_graphs(engines: list[str], graph: Callable[[str], Path]) -> tuple[dict[str, Path], dict[str, str]]:
    """`graph(engine)` for each of the graph `engines`, and those left out, with the reason, when
    the exporter refuses the model: all of them, as they all run the one exported graph."""
    graphs: dict[str, Path] = {}
    for i, engine in enumerate(engines):
        try:
            graphs[engine] = graph(engine)
        except ExportError as exc:
            return graphs, dict.fromkeys(engines[i:], str(exc))
    return graphs, {}
