"""A model's probabilities over token ids from any engine (`engines`), and which engine
`engine: auto` runs: every engine timed on real rows and compared with fp32, the fastest that
labels them as fp32 does chosen, rather than assumed from the CPU's name."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel

from rnnlib.common.fingerprint import digest_json
from rnnlib.common.storage import read_json, write_json
from rnnlib.modeling.batches import collate
from rnnlib.modeling.engines import GRAPH_ENGINES, Engine, available_engines, graph_engine, machine, torch_engine
from rnnlib.modeling.model import RNNClassifier

AGREEMENT_ROWS = 2000  # test rows (a seeded sample of larger splits): bf16 is emulated, slowly, without bf16 units
MIN_AGREEMENT = 0.995  # share of rows an engine must label as fp32 does for `auto` to choose it
TIMED_PASSES = 3


@torch.inference_mode()
def predict_proba(model: RNNClassifier | Engine, ids: pa.ListArray, num_classes: int, batch_size: int) -> np.ndarray:
    """(rows, classes) probabilities from an engine (a model: in its own precision). Rows are
    scored in length order, so a batch pads little; on GPU the next batch is built while the
    current one runs (its results are fetched only after the next is launched)."""
    engine = model if isinstance(model, Engine) else torch_engine(model, "as is")
    device = engine.device
    lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False)
    order = np.argsort(lengths, kind="stable")
    ordered = ids.take(pa.array(order))
    out = np.empty((len(ids), num_classes), dtype=np.float32)
    pending: tuple[slice, torch.Tensor] | None = None
    for start in range(0, len(ids), batch_size):
        rows = slice(start, min(start + batch_size, len(ids)))
        batch = collate(ordered.slice(start, rows.stop - start), np.zeros(rows.stop - start, np.int64))
        batch = batch.to(device)
        probabilities = engine(batch.ids, batch.lengths)
        if pending is not None:
            out[order[pending[0]]] = pending[1].cpu().numpy()
        pending = (rows, probabilities)
    if pending is not None:
        out[order[pending[0]]] = pending[1].cpu().numpy()
    return out


class EngineTrial(BaseModel):
    """One engine on the calibration rows, against fp32 on the same rows."""

    engine: str
    tokens_per_second: float
    labels_same: float  # share of rows given fp32's label
    max_probability_change: float  # largest |p - p_fp32| over every row and class


class EngineChoice(BaseModel):
    """What `engine: auto` runs on a machine, why, and what every engine measured there."""

    engine: str
    reason: str
    cpu: str  # torch's CPU capability, e.g. AVX512
    rows: int
    trials: list[EngineTrial]
    not_measured: dict[str, str] = {}  # engines installed but not measured, and why

    def trial(self, engine: str) -> EngineTrial:
        return next(t for t in self.trials if t.engine == engine)

    def leaving_out(self, refused: dict[str, str]) -> EngineChoice:
        """This choice, naming the engines installed but not measured (the model did not export)."""
        if not refused:
            return self
        reason = f"{self.reason}; not measured, the model does not export: {', '.join(refused)}"
        return self.model_copy(update={"not_measured": refused, "reason": reason})


def held_out_ids(test_dir: str | Path, max_rows: int = AGREEMENT_ROWS, seed: int = 0) -> pa.ListArray:
    """The test split's token ids, or a seeded sample of `max_rows` of them."""
    ids = pq.read_table(test_dir, columns=["ids"])["ids"].combine_chunks()
    if len(ids) <= max_rows:
        return ids
    picked = np.sort(np.random.default_rng(seed).choice(len(ids), max_rows, replace=False))
    return ids.take(pa.array(picked))


def choose_engine(engines: dict[str, Engine], ids: pa.ListArray, num_classes: int, batch_size: int) -> EngineChoice:
    """Score `ids` with every engine (`engines` holds fp32): the fastest whose labels agree with
    fp32's on at least MIN_AGREEMENT of the rows. A first pass warms each up and is compared with
    fp32's; its speed is the best of TIMED_PASSES more (timings on a shared machine are noisy)."""
    tokens = int(pc.sum(pc.list_value_length(ids)).as_py() or 0)
    expected = predict_proba(engines["fp32"], ids, num_classes, batch_size)
    trials = []
    for name, engine in engines.items():
        got = predict_proba(engine, ids, num_classes, batch_size)
        seconds = min(
            _timed(lambda e=engine: predict_proba(e, ids, num_classes, batch_size)) for _ in range(TIMED_PASSES)
        )
        trials.append(
            EngineTrial(
                engine=name,
                tokens_per_second=round(tokens / max(seconds, 1e-9), 1),
                labels_same=float((got.argmax(1) == expected.argmax(1)).mean()) if len(ids) else 1.0,
                max_probability_change=float(np.abs(got - expected).max(initial=0.0)),
            )
        )
    faithful = [t for t in trials if t.labels_same >= MIN_AGREEMENT]  # fp32 always is
    best = max(faithful, key=lambda t: t.tokens_per_second)
    fp32 = next(t for t in trials if t.engine == "fp32")
    left_out = [f"{t.engine} ({t.labels_same:.2%})" for t in trials if t not in faithful]
    reason = (
        f"{best.engine}: {best.tokens_per_second:,.0f} tokens/s, "
        f"{best.tokens_per_second / fp32.tokens_per_second:.2f}x fp32, "
        f"same label as fp32 on {best.labels_same:.2%} of {len(ids)} rows"
        + (f"; too far from fp32: {', '.join(left_out)}" if left_out else "")
    )
    cpu = torch.backends.cpu.get_cpu_capability()
    return EngineChoice(engine=best.engine, reason=reason, cpu=cpu, rows=len(ids), trials=trials)


def _timed(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def cached_choice(cache_dir: str | Path, identity: dict[str, Any], choose: Callable[[], EngineChoice]) -> EngineChoice:
    """`choose()`'s result, measured once per `identity` on this machine (its CPU, library
    versions and threads are part of the key) and kept under `cache_dir`."""
    path = Path(cache_dir) / f"choice-{digest_json({**identity, **machine()})}.json"
    if path.is_file():
        return EngineChoice.model_validate(read_json(path))
    choice = choose()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, choice)
    return choice


def engines_for(
    model: RNNClassifier, graphs: dict[str, Path] | None = None, device: torch.device = torch.device("cpu")
) -> dict[str, Engine]:
    """Every engine that runs on `device`, on copies of `model` (fp32 first); on the CPU, the
    graph engines (ONNX Runtime, OpenVINO) for which `graphs` holds the model exported or
    quantised (onnx-int8)."""
    fp32 = copy.deepcopy(model).to(device).float().eval()
    names = available_engines(device)
    engines = {name: torch_engine(copy.deepcopy(fp32), name) for name in names if name not in GRAPH_ENGINES}
    for name, graph in (graphs or {}).items():
        if name in names:
            engines[name] = graph_engine(graph, name)
    return engines
