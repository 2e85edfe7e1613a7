"""A model bundle applied to canonical text partitions: the bundle's own preprocessing and
vocabulary (so scoring matches training exactly), length-sorted batches in inference mode, and
every row either scored or rejected with its reason."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel

from rnnlib.common.storage import write_parquet
from rnnlib.modeling.bundle import Bundle, BundleError, load_bundle
from rnnlib.modeling.device import default_batch_rows, for_inference, pick_device
from rnnlib.modeling.inference import predict_proba
from rnnlib.prepare.preprocess import preprocess_table
from rnnlib.prepare.tensorize import REJECTS_SCHEMA, encode_ids

DEFAULT_MAX_LENGTH = 1000  # for bundles trained without a maximum: bounds a batch's memory
# Characters kept per token the model reads: far more than any real token with its separator,
# so only a text much longer than the model reads is cut, and it is flagged truncated
MAX_CHARS_PER_TOKEN = 64
TOP_K_TYPE = pa.list_(pa.struct([("label", pa.string()), ("probability", pa.float32())]))
SCORES_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("row", pa.int64()),
        ("label", pa.string()),
        ("probability", pa.float32()),
        ("top_k", TOP_K_TYPE),
        ("length", pa.int32()),  # tokens before truncation
        ("truncated", pa.bool_()),
        ("model_version", pa.string()),
    ]
)


@dataclass(frozen=True)
class ScoringSettings:
    """What a worker needs to score a partition (small and picklable)."""

    bundle: str
    version: str
    top_k: int
    max_length: int
    batch_size: int | None = None  # default: by device
    device: str = "auto"
    precision: str = "auto"

    def batch_rows(self, device: torch.device) -> int:
        return self.batch_size or default_batch_rows(device)


@lru_cache(maxsize=2)
def worker_bundle(path: str, version: str, device: str, precision: str = "auto") -> Bundle:
    """The bundle, loaded once per worker process rather than per partition, in the precision
    asked for (see `inference_dtype`). A bundle rewritten under the same path during a run is
    refused: one run scores with one model."""
    bundle = load_for_inference(path, device, precision)
    if bundle.version != version:
        raise BundleError(
            f"the bundle changed during the run (version {bundle.version}, run started with {version})", file=path
        )
    return bundle


def load_for_inference(path: str | Path, device: str = "auto", precision: str = "auto") -> Bundle:
    """A bundle on its device, in the number format scoring runs in (see `for_inference`)."""
    bundle = load_bundle(path, pick_device(device))
    return replace(bundle, model=for_inference(bundle.model, precision, pick_device(device)))


def _top_k(probabilities: np.ndarray, labels: tuple[str, ...], k: int) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """(best label ids, their probabilities, list<struct<label, probability>> of the k best)."""
    k = min(k, probabilities.shape[1])
    best = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    best_p = np.take_along_axis(probabilities, best, axis=1)
    names = pa.array(labels, pa.string()).take(pa.array(best.ravel()))
    entries = pa.StructArray.from_arrays(
        [names, pa.array(best_p.ravel(), pa.float32())], names=["label", "probability"]
    )
    offsets = pa.array(np.arange(0, best.size + 1, k, dtype=np.int32))
    return best[:, 0], best_p[:, 0], pa.ListArray.from_arrays(offsets, entries).cast(TOP_K_TYPE)


def cut_long_texts(table: pa.Table, max_tokens: int) -> tuple[pa.Table, pa.Array]:
    """Texts cut to `max_tokens` * MAX_CHARS_PER_TOKEN characters before tokenising, so a huge
    document costs no more than the part of it the model reads; and which rows were cut."""
    limit = max_tokens * MAX_CHARS_PER_TOKEN
    cut = pc.fill_null(pc.greater(pc.utf8_length(table["text"]), limit), False)
    if not pc.any(cut).as_py():
        return table, cut
    text = pc.if_else(cut, pc.utf8_slice_codeunits(table["text"], 0, limit), table["text"])
    return table.set_column(table.schema.get_field_index("text"), "text", text), cut


def score_table(table: pa.Table, bundle: Bundle, settings: ScoringSettings) -> tuple[pa.Table, pa.Table]:
    """A canonical table (ingest's schema) -> (scores, rejects); together they hold every row."""
    table, cut = cut_long_texts(table, settings.max_length)
    tokens = preprocess_table(table, bundle.preprocess)  # rejects rows left with no token
    kept = pc.is_null(tokens["reject"])
    kept_rows = tokens.filter(kept)
    ids, lengths = encode_ids(kept_rows["tokens"], bundle.vocab, settings.max_length)
    device = next(bundle.model.parameters()).device
    probabilities = predict_proba(bundle.model, ids, len(bundle.labels.labels), settings.batch_rows(device))
    best, best_p, top_k = _top_k(probabilities, bundle.labels.labels, settings.top_k)
    scores = pa.table(
        {
            "id": kept_rows["id"],
            "source": kept_rows["source"],
            "row": kept_rows["row"],
            "label": pa.array(bundle.labels.labels, pa.string()).take(pa.array(best, pa.int64())),
            "probability": pa.array(best_p, pa.float32()),
            "top_k": top_k,
            "length": pa.array(lengths, pa.int32()),
            "truncated": pc.or_(pa.array(lengths > settings.max_length), cut.filter(kept)),
            "model_version": pa.repeat(bundle.version, kept_rows.num_rows),
        },
        schema=SCORES_SCHEMA,
    )
    rejected = tokens.filter(pc.invert(kept))
    rejects = pa.table(
        {"id": rejected["id"], "source": rejected["source"], "row": rejected["row"], "reason": rejected["reject"]},
        schema=REJECTS_SCHEMA,
    )
    return scores, rejects


class PartitionScores(BaseModel):
    """What scoring one partition did."""

    partition: str
    rows: int
    scored: int
    rejected: int
    text_bytes: int


def score_partition(staged: Path, scores_file: Path, rejects_file: Path, settings: ScoringSettings) -> PartitionScores:
    """Score one staged partition. Each file is written atomically, the rejects first: the scores
    file's existence is what marks the partition done."""
    bundle = worker_bundle(settings.bundle, settings.version, settings.device, settings.precision)
    table = pq.read_table(staged)
    scores, rejects = score_table(table, bundle, settings)
    if rejects.num_rows:
        write_parquet(rejects, rejects_file)
    write_parquet(scores, scores_file)
    return PartitionScores(
        partition=staged.name,
        rows=table.num_rows,
        scored=scores.num_rows,
        rejected=rejects.num_rows,
        text_bytes=int(pc.sum(pc.binary_length(table["text"])).as_py() or 0),
    )
