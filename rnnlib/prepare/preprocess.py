"""Preprocess: canonical text partitions -> token-list partitions, one Dask task per partition."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rnnlib.common.accounting import Accounting, outcomes, summarise
from rnnlib.common.cluster import map_partitions
from rnnlib.common.storage import MANIFEST, building, partitions, write_json
from rnnlib.config import PreprocessConfig
from rnnlib.prepare.text import tokenize

if TYPE_CHECKING:
    from distributed import Client

# Token lists get an explicit Arrow list type: generic dataframe conversions mangle them.
TOKENS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("tokens", pa.list_(pa.dictionary(pa.int32(), pa.string()))),
        ("label", pa.string()),
        ("split", pa.string()),
        ("source", pa.string()),
        ("row", pa.int64()),
        ("reject", pa.string()),
    ]
)
NO_TOKENS = "no tokens after preprocessing"


def preprocess_table(table: pa.Table, cfg: PreprocessConfig) -> pa.Table:
    """Tokenise the text column; kept rows left with no token are rejected with a reason."""
    tokens = tokenize(table["text"], cfg)
    no_tokens = pc.equal(pc.list_value_length(tokens), 0)  # null where already rejected
    empty = pc.fill_null(pc.and_kleene(pc.is_null(table["reject"]), no_tokens), False)
    reject = pc.if_else(empty, pa.scalar(NO_TOKENS), table["reject"])
    # rows rejected here have no tokens: null them (their offsets span nothing)
    rejected = pc.is_valid(reject)
    rejected = rejected.combine_chunks() if isinstance(rejected, pa.ChunkedArray) else rejected
    tokens = pa.ListArray.from_arrays(tokens.offsets, tokens.values, mask=rejected)
    columns = {name: table[name] for name in TOKENS_SCHEMA.names if name in table.column_names}
    return pa.table({**columns, "tokens": tokens, "reject": reject}).select(TOKENS_SCHEMA.names).cast(TOKENS_SCHEMA)


def preprocess_partition(in_file: Path, out_file: Path, cfg: PreprocessConfig) -> dict[str, Any]:
    table = preprocess_table(pq.read_table(in_file), cfg)
    # no column statistics: min/max over millions of token strings cost more than the write
    # itself, and nothing reads them
    pq.write_table(table, out_file, write_statistics=False)
    return {
        "outcomes": outcomes(table["reject"]),
        "tokens": int(pc.sum(pc.list_value_length(table["tokens"])).as_py() or 0),
    }


class PreprocessManifest(Accounting):
    """The preprocess stage's manifest: the rows tokenised and the partitions written."""

    tokens: int
    parts: list[str]


def preprocess(
    in_dir: str | Path, *, out_dir: str | Path, cfg: PreprocessConfig, client: Client | None = None
) -> PreprocessManifest:
    """Tokenise every partition on the cluster; the manifest carries the cumulative accounting."""
    files = partitions(in_dir)
    with building(out_dir) as scratch:
        stats = map_partitions(client, preprocess_partition, files, [scratch / f.name for f in files], cfg=cfg)
        manifest = PreprocessManifest(
            **summarise(s["outcomes"] for s in stats).model_dump(),
            tokens=sum(s["tokens"] for s in stats),
            parts=[f.name for f in files],
        )
        write_json(scratch / MANIFEST, manifest)
    return manifest
