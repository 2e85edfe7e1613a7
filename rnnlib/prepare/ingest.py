"""Ingest: read every input into one canonical Parquet table (a folder of bounded partitions).

Columns: id, text, label, split (predefined or null), source, row, reject. A rejected row keeps
its provenance and reason with a null text, so every input row stays accounted for.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rnnlib.common.accounting import KEPT, Accounting, summarise
from rnnlib.common.cluster import map_partitions
from rnnlib.common.storage import MANIFEST, building, write_json
from rnnlib.config import SourceConfig
from rnnlib.sources.inputs import is_labelled, resolve_inputs
from rnnlib.sources.readers import ReadUnit, plan_units, read_unit

if TYPE_CHECKING:
    from distributed import Client

CANONICAL_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("label", pa.string()),
        ("split", pa.string()),
        ("source", pa.string()),
        ("row", pa.int64()),
        ("reject", pa.string()),
    ]
)
NOT_SELECTED = "label not selected (source.keep_labels)"
T = TypeVar("T")
_END = object()  # what read_ahead's reader returns when the chunks are exhausted
SURROGATE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of undecodable bytes


def undecodable(encoding: str = "utf-8") -> str:
    """The reject reason of a row whose bytes `encoding` cannot decode (`auto`: per document)."""
    return f"undecodable bytes (not {'UTF-8' if encoding == 'utf-8' else encoding})"


def _objects(column: pd.Series) -> np.ndarray:
    values = column.to_numpy(dtype=object)
    return np.where(pd.isna(values), None, values)


def _strings(values: np.ndarray) -> tuple[pa.Array, np.ndarray]:
    """Python values as an Arrow string array, and the rows whose text held undecodable bytes
    (escaped as surrogates, which UTF-8 cannot encode; null in the array). All strings and all
    valid, the common case, takes one conversion; numbers (labels may be) and surrogates take a
    slower pass."""
    try:
        return pa.array(values, pa.string(), from_pandas=True), np.zeros(len(values), dtype=bool)
    except (pa.ArrowTypeError, pa.ArrowInvalid, UnicodeEncodeError):
        bad = np.array([isinstance(v, str) and bool(SURROGATE.search(v)) for v in values], bool)
        return pa.array([None if d or v is None else str(v) for v, d in zip(values, bad)], pa.string()), bad


def canonicalize(
    frame: pd.DataFrame,
    split: str | None,
    label_names: dict[str, str],
    labelled: bool,
    keep_labels: tuple[str, ...] = (),
    encoding: str = "utf-8",
) -> pa.Table:
    """Validate a reader chunk and give it the canonical schema, flagging rejects with reasons.

    Undecodable bytes are found first (they cannot enter Arrow); the rest runs on Arrow arrays.
    """
    n = len(frame)
    raw_text = _objects(frame["text"])
    text, bad_text = _strings(raw_text)
    label, bad_label = _strings(_objects(frame["label"])) if labelled else (pa.nulls(n, pa.string()), None)
    label = pc.utf8_trim_whitespace(label)
    if label_names:
        keys = pa.array(list(label_names), pa.string())
        renamed = pa.array(list(label_names.values()), pa.string()).take(pc.index_in(label, keys))
        label = pc.coalesce(renamed, label)
    checks = [
        (bad_text, undecodable(encoding)),
        (pa.array(raw_text == None), "null text"),  # noqa: E711
        (pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0), "empty text"),
    ]
    if labelled:
        checks += [
            (bad_label, undecodable(encoding)),
            (pc.or_kleene(pc.is_null(label), pc.equal(label, "")), "missing label"),
        ]
        if keep_labels:
            checks.append((pc.invert(pc.is_in(label, pa.array(keep_labels, pa.string()))), NOT_SELECTED))
    reject = pa.array(_objects(frame["reject"]) if "reject" in frame else [None] * n, pa.string())
    for mask, reason in checks:  # the first reason found wins
        hit = pc.and_(pc.is_null(reject), pc.fill_null(pa.array(mask), False))
        reject = pc.if_else(hit, pa.scalar(reason), reject)
    kept = pc.is_null(reject)
    source = pa.array(frame["source"].astype(str).to_numpy(dtype=object), pa.string())
    rows = pa.array(frame["row"].to_numpy(dtype=np.int64), pa.int64())
    generated = pc.binary_join_element_wise(source, pc.cast(rows, pa.string()), ":")
    ids = pc.coalesce(_strings(_objects(frame["id"]))[0], generated)
    null = pa.nulls(n, pa.string())
    return pa.table(
        {
            "id": ids,
            "text": pc.if_else(kept, text, null),
            "label": pc.if_else(kept, label, null) if labelled else null,
            "split": pa.array([split] * n, pa.string()),
            "source": source,
            "row": rows,
            "reject": reject,
        },
        schema=CANONICAL_SCHEMA,
    )


class PartWriter:
    """Buffers tables and writes Parquet partitions of `rows` rows, or fewer where their text
    would pass `text_bytes` (at least one row each; the last may be short)."""

    def __init__(self, out_dir: Path, rows: int, prefix: str, text_bytes: int) -> None:
        self.out_dir, self.rows, self.text_bytes, self.prefix = out_dir, rows, text_bytes, prefix
        self.buffer: list[pa.Table] = []
        self.buffered = self.buffered_bytes = 0
        self.parts: list[str] = []

    def add(self, table: pa.Table) -> None:
        self.buffer.append(table)
        self.buffered += table.num_rows
        self.buffered_bytes += _text_bytes(table)
        while self.buffered >= self.rows or self.buffered_bytes >= self.text_bytes:
            self._flush(self._rows_that_fit())

    def close(self) -> None:
        if self.buffered:
            self._flush(self.buffered)

    def _rows_that_fit(self) -> int:
        if self.buffered_bytes < self.text_bytes:
            return self.rows
        sizes = pc.binary_length(pa.concat_tables(self.buffer)["text"]).fill_null(0).to_numpy()
        over = int(np.searchsorted(np.cumsum(sizes), self.text_bytes, side="right"))
        return max(1, min(over, self.rows))

    def _flush(self, n: int) -> None:
        table = pa.concat_tables(self.buffer)
        name = f"{self.prefix}-{len(self.parts):04d}.parquet"
        pq.write_table(table.slice(0, n), self.out_dir / name)
        self.parts.append(name)
        rest = table.slice(n)
        self.buffer, self.buffered = ([rest] if rest.num_rows else []), rest.num_rows
        self.buffered_bytes = _text_bytes(rest)


def _text_bytes(table: pa.Table) -> int:
    return int(pc.sum(pc.binary_length(table["text"])).as_py() or 0)


def read_ahead(chunks: Generator[T, None, None]) -> Iterator[T]:
    """`chunks`, each read in a thread while the caller works on the one before: decompression,
    parsing and file reads release the GIL, so reading one big file keeps a second core busy."""
    with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as pool:
        try:
            pending = pool.submit(next, chunks, _END)
            while (chunk := pending.result()) is not _END:
                pending = pool.submit(next, chunks, _END)
                yield chunk
        finally:
            pending.cancel() or pending.exception()  # let a read in flight finish first
            chunks.close()


def ingest_unit(
    unit: ReadUnit,
    index: int,
    out_dir: Path,
    partition_rows: int,
    partition_bytes: int,
    label_names: dict[str, str],
    labelled: bool,
    keep_labels: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Read one unit into canonical partitions; return their names and per-file outcomes."""
    writer = PartWriter(out_dir, partition_rows, prefix=f"part-{index:05d}", text_bytes=partition_bytes)
    per_file: dict[str, Counter] = defaultdict(Counter)
    # one-document-per-file layouts are accounted per input folder, not per file
    per_folder = unit.source(unit.root) if unit.spec.format == "folder_per_class" else None
    for frame in read_ahead(read_unit(unit, partition_rows, partition_bytes)):
        table = canonicalize(frame, unit.spec.split, label_names, labelled, keep_labels, unit.spec.encoding)
        _count_outcomes(per_file, table, per_folder)
        writer.add(table)
    writer.close()
    return {"parts": writer.parts, "per_file": dict(per_file)}


class IngestManifest(Accounting):
    """The ingest stage's manifest: the rows read, per file too, and the partitions written."""

    files: dict[str, Accounting]  # per input file (a folder-per-class input: per folder)
    parts: list[str]
    labelled: bool
    encodings: dict[str, str] = {}  # file -> what it was read as, where not UTF-8


def ingest(source: SourceConfig, *, out_dir: str | Path, client: Client | None = None) -> IngestManifest:
    """Read all inputs into canonical partitions under `out_dir`, one read unit per task on the
    cluster (or in this process without a client); return the stage manifest."""
    inputs, label_names = resolve_inputs(source)
    labelled = is_labelled(inputs)
    planned = [(item, plan_units(item.fs, item.path, item.spec, source.partition_rows)) for item in inputs]
    units = [unit for _, item_units in planned for unit in item_units]
    # what each file was read as, where an input asked for other than UTF-8 (auto: what was found)
    encodings = {
        unit.source(unit.root if unit.spec.format == "folder_per_class" else unit.paths[0]): unit.spec.encoding
        for item, item_units in planned
        if item.spec.encoding != "utf-8"
        for unit in item_units
    }
    with building(out_dir) as scratch:
        results = map_partitions(
            client,
            ingest_unit,
            units,
            range(len(units)),
            out_dir=scratch,
            partition_rows=source.partition_rows,
            partition_bytes=source.partition_bytes,
            label_names=label_names,
            keep_labels=tuple(source.keep_labels),
            labelled=labelled,
        )
        per_file: dict[str, Counter] = defaultdict(Counter)
        for result in results:
            for src, counts in result["per_file"].items():
                per_file[src].update(counts)
        manifest = IngestManifest(
            **summarise(per_file.values()).model_dump(),
            files={src: summarise([c]) for src, c in sorted(per_file.items())},
            parts=[p for r in results for p in r["parts"]],
            labelled=labelled,
            encodings=encodings,
        )
        write_json(scratch / MANIFEST, manifest)
    return manifest


def _count_outcomes(per_file: defaultdict[str, Counter], table: pa.Table, source: str | None) -> None:
    """Add a chunk's kept/rejected counts per source file (or all under one `source` name)."""
    keys = ["reject"] if source else ["source", "reject"]
    grouped = table.group_by(keys).aggregate([([], "count_all")]).to_pydict()
    sources = grouped.get("source", [source] * len(grouped["reject"]))
    for src, reason, n in zip(sources, grouped["reject"], grouped["count_all"]):
        per_file[src][reason or KEPT] += n
