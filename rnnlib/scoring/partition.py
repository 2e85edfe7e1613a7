"""A model bundle applied to canonical text partitions: the bundle's own preprocessing and
vocabulary (so scoring matches training exactly), length-sorted batches run by the scoring
engine (`resolve_engine`: as asked, or `auto`'s measured choice), and every row either scored
or rejected with its reason."""

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

from rnnlib.common.fingerprint import code_version
from rnnlib.common.storage import write_parquet
from rnnlib.modeling.bundle import Bundle, BundleError, load_bundle
from rnnlib.modeling.device import default_batch_rows, pick_device
from rnnlib.modeling.engines import (
    GRAPH_ENGINES,
    Engine,
    available_engines,
    engine_device,
    graph_engine,
    torch_engine,
)
from rnnlib.modeling.export import engine_graph, export_onnx, exported_graphs
from rnnlib.modeling.inference import EngineChoice, cached_choice, choose_engine, engines_for, predict_proba
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
    engine: str = "fp32"  # one of ENGINES: `auto` is resolved before scoring
    graph: str | None = None  # the ONNX engines' graph

    def batch_rows(self, device: torch.device) -> int:
        return self.batch_size or default_batch_rows(device)


@dataclass(frozen=True)
class LoadedModel:
    """A bundle (vocabulary, labels, preprocessing) and the engine that runs its model."""

    bundle: Bundle
    engine: Engine


@lru_cache(maxsize=2)
def worker_model(path: str, version: str, device: str, engine: str, graph: str | None) -> LoadedModel:
    """The bundle and its engine, loaded once per worker process rather than per partition. A
    bundle rewritten under the same path during a run is refused: one run scores with one model."""
    loaded = load_model(path, device, engine, graph)
    if loaded.bundle.version != version:
        raise BundleError(
            f"the bundle changed during the run (version {loaded.bundle.version}, run started with {version})",
            file=path,
        )
    return loaded


def load_model(path: str | Path, device: str = "auto", engine: str = "fp32", graph: str | None = None) -> LoadedModel:
    """A bundle on its device, its model run by `engine` (the ONNX Runtime and OpenVINO engines: on `graph`)."""
    bundle = load_bundle(path, engine_device(device, engine))
    run = graph_engine(graph, engine) if engine in GRAPH_ENGINES else torch_engine(bundle.model, engine)
    return LoadedModel(bundle, run)


CALIBRATION_ROWS = 512  # rows of the dump itself that `auto` measures the engines on
MIN_CALIBRATION_ROWS = 64  # fewer: too few to time; fp32 unless a choice is cached


def resolve_engine(
    settings: ScoringSettings, asked: str, sample: pa.Table, cache_dir: str | Path
) -> tuple[ScoringSettings, str]:
    """`settings` with the engine to run and the reason: `asked` itself, or for `auto` the
    engine measured fastest among those faithful to fp32 on `sample`'s rows (a canonical
    table; see `choose_engine`), cached under `cache_dir` per machine and bundle. The graph
    engines' graphs are exported once per bundle into `cache_dir`."""
    reason = "asked for"
    if asked == "auto":
        choice = _auto_choice(settings, sample, cache_dir)
        asked, reason = (choice.engine, choice.reason) if choice else ("fp32", "too few rows to measure on")
    graph = str(onnx_graph(settings, cache_dir, asked)) if asked in GRAPH_ENGINES else None
    return replace(settings, engine=asked, graph=graph), reason


def onnx_graph(settings: ScoringSettings, cache_dir: str | Path, engine: str = "onnx") -> Path:
    """The graph `engine` runs, made once per bundle version and exporting code: the bundle's
    model as ONNX (exported and checked; onnx and the OpenVINO engines), or for onnx-int8 that
    graph quantised. The exporting
    code's digest (rnnlib's export module and what it imports, the versions of torch, onnx and
    ONNX Runtime among them) is in the name, so an upgrade makes the graph again."""
    stem = f"model-{settings.version}-{code_version(export_onnx.__module__)[:16]}"
    return engine_graph(settings.bundle, engine, Path(cache_dir) / f"{stem}.onnx")


def _auto_choice(settings: ScoringSettings, sample: pa.Table, cache_dir: str | Path) -> EngineChoice | None:
    device = pick_device(settings.device)
    identity = {"bundle": settings.version, "batch": settings.batch_rows(device), "worker_threads": 1}
    if device.type == "cuda":  # which engine is faster depends on the GPU and the model's size
        identity["gpu"] = torch.cuda.get_device_name(device)

    def measure() -> EngineChoice:
        bundle = load_bundle(settings.bundle)
        tokens = preprocess_table(sample.slice(0, CALIBRATION_ROWS), bundle.preprocess)
        ids, _ = encode_ids(tokens.filter(pc.is_null(tokens["reject"]))["tokens"], bundle.vocab, settings.max_length)
        if len(ids) < MIN_CALIBRATION_ROWS:
            raise _TooFew
        on_graphs = [engine for engine in available_engines(device) if engine in GRAPH_ENGINES]
        # none without ONNX Runtime; none, and said so, for a model the exporter refuses
        graphs, refused = exported_graphs(on_graphs, lambda engine: onnx_graph(settings, cache_dir, engine))
        engines = engines_for(bundle.model, graphs, device)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as a scoring worker runs: one thread each
        try:
            return choose_engine(engines, ids, len(bundle.labels.labels), identity["batch"]).leaving_out(refused)
        finally:
            torch.set_num_threads(threads)

    try:
        return cached_choice(cache_dir, identity, measure)
    except _TooFew:
        return None


class _TooFew(Exception):
    """Too few rows to measure the engines on."""


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


def score_table(table: pa.Table, loaded: LoadedModel, settings: ScoringSettings) -> tuple[pa.Table, pa.Table]:
    """A canonical table (ingest's schema) -> (scores, rejects); together they hold every row."""
    bundle = loaded.bundle
    table, cut = cut_long_texts(table, settings.max_length)
    tokens = preprocess_table(table, bundle.preprocess)  # rejects rows left with no token
    kept = pc.is_null(tokens["reject"])
    kept_rows = tokens.filter(kept)
    ids, lengths = encode_ids(kept_rows["tokens"], bundle.vocab, settings.max_length)
    batch_rows = settings.batch_rows(loaded.engine.device)
    probabilities = predict_proba(loaded.engine, ids, len(bundle.labels.labels), batch_rows)
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
    loaded = worker_model(settings.bundle, settings.version, settings.device, settings.engine, settings.graph)
    table = pq.read_table(staged)
    scores, rejects = score_table(table, loaded, settings)
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
