"""A model's probabilities over token ids, and how far the reduced number formats that scoring
may run in (`precision`: bf16, int8) move them from fp32's: what `auto` costs, measured on the
model's own test rows rather than assumed."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel

from rnnlib.modeling.batches import collate
from rnnlib.modeling.device import for_inference, inference_dtype
from rnnlib.modeling.model import RNNClassifier

REDUCED_PRECISIONS = ("bf16", "int8")  # what a CPU can score in besides fp32
AGREEMENT_ROWS = 2000  # test rows (a seeded sample of larger splits): bf16 is emulated, slowly, without bf16 units


@torch.inference_mode()
def predict_proba(model: RNNClassifier, ids: pa.ListArray, num_classes: int, batch_size: int) -> np.ndarray:
    """(rows, classes) probabilities, computed in the model's own precision. Rows are scored in
    length order, so a batch pads little; on GPU the next batch is built while the current one
    runs (its results are fetched only after the next is launched)."""
    device = next(model.parameters()).device
    lengths = pc.list_value_length(ids).to_numpy(zero_copy_only=False)
    order = np.argsort(lengths, kind="stable")
    ordered = ids.take(pa.array(order))
    out = np.empty((len(ids), num_classes), dtype=np.float32)
    pending: tuple[slice, torch.Tensor] | None = None
    for start in range(0, len(ids), batch_size):
        rows = slice(start, min(start + batch_size, len(ids)))
        batch = collate(ordered.slice(start, rows.stop - start), np.zeros(rows.stop - start, np.int64))
        batch = batch.to(device)
        probabilities = model(batch.ids, batch.lengths).float().softmax(1)
        if pending is not None:
            out[order[pending[0]]] = pending[1].cpu().numpy()
        pending = (rows, probabilities)
    if pending is not None:
        out[order[pending[0]]] = pending[1].cpu().numpy()
    return out


class Agreement(BaseModel):
    """One number format's predictions against fp32's on the same rows."""

    precision: str
    rows: int
    labels_same: float  # share of rows given fp32's label
    max_probability_change: float  # largest |p - p_fp32| over every row and class


class PrecisionReport(BaseModel):
    """What scoring's `precision: auto` picks on the CPU that evaluated the model, and what each
    reduced format costs in agreement with fp32 (the same on any CPU: only their speed differs)."""

    cpu: str  # torch's CPU capability, e.g. AVX512
    auto: str  # what `auto` scores in on that CPU
    agreement: list[Agreement]


def held_out_ids(test_dir: str | Path, max_rows: int = AGREEMENT_ROWS, seed: int = 0) -> pa.ListArray:
    """The test split's token ids, or a seeded sample of `max_rows` of them."""
    ids = pq.read_table(test_dir, columns=["ids"])["ids"].combine_chunks()
    if len(ids) <= max_rows:
        return ids
    picked = np.sort(np.random.default_rng(seed).choice(len(ids), max_rows, replace=False))
    return ids.take(pa.array(picked))


def precision_report(
    model: RNNClassifier, ids: pa.ListArray, num_classes: int, batch_size: int = 64
) -> PrecisionReport:
    """Each reduced format's agreement with fp32 over `ids`, on the CPU (where they run)."""
    fp32 = copy.deepcopy(model).cpu().float()
    expected = predict_proba(fp32, ids, num_classes, batch_size)
    agreement = []
    for precision in REDUCED_PRECISIONS:
        # native_bf16: measured knowingly, so no warning about emulated bf16's speed
        reduced = for_inference(copy.deepcopy(fp32), precision, torch.device("cpu"), native_bf16=True)
        got = predict_proba(reduced, ids, num_classes, batch_size)
        agreement.append(
            Agreement(
                precision=precision,
                rows=len(ids),
                labels_same=float((got.argmax(1) == expected.argmax(1)).mean()) if len(ids) else 1.0,
                max_probability_change=float(np.abs(got - expected).max(initial=0.0)),
            )
        )
    auto = inference_dtype("auto", torch.device("cpu"))
    return PrecisionReport(
        cpu=torch.backends.cpu.get_cpu_capability(),
        auto="bf16" if auto == torch.bfloat16 else "fp32",
        agreement=agreement,
    )
