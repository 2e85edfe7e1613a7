"""Row accounting: every input row is either kept or rejected with a reason, at every stage."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

KEPT = "kept"


def outcomes(reject: pa.Array | pa.ChunkedArray) -> Counter:
    """Counts of `kept` and of each reject reason in a reject column."""
    counts = pc.value_counts(pc.fill_null(reject, KEPT))
    return Counter({str(v["values"]): int(v["counts"]) for v in counts.to_pylist()})


class Accounting(BaseModel):
    """Where every row went: rows = kept + sum(rejected)."""

    rows: int
    kept: int
    rejected: dict[str, int]  # reason -> rows


def summarise(counters: Iterable[Mapping[str, int]]) -> Accounting:
    """Totals over partitions."""
    total: Counter = Counter()
    for counts in counters:
        total.update(counts)
    return Accounting(
        rows=sum(total.values()),
        kept=total.get(KEPT, 0),
        rejected={k: v for k, v in sorted(total.items()) if k != KEPT},
    )


class AccountingError(RuntimeError):
    """Rows went missing between reading and writing: a bug, never expected."""
