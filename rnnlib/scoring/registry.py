"""The model registry: the newest model that passed evaluation is the one scoring uses.

    <registry>/current.json          which bundle is current, and why
    <registry>/bundles/<version>/    promoted bundles (never modified once written)
    <registry>/decisions.jsonl       every promotion decision, kept or replaced

A candidate replaces the current model only if it scores at least as well on the same test
rows: the candidate's own test split, raw text scored by both models through the scoring path,
so each model applies its own preprocessing and vocabulary.
"""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from rnnlib.common.storage import partitions, read_json, write_json
from rnnlib.modeling.bundle import CONFIG, CURRENT, current_bundle, load_bundle
from rnnlib.prepare.split import with_split
from rnnlib.scoring.partition import DEFAULT_MAX_LENGTH, ScoringSettings, score_table

BUNDLES, DECISIONS = "bundles", "decisions.jsonl"


class Decision(BaseModel):
    """One promotion decision, as `decisions.jsonl` records it."""

    time: str
    candidate: str  # the candidate bundle's version
    test_rows: int
    candidate_accuracy: float
    current: str | None = None  # the version that was current, if any
    current_accuracy: float | None = None
    promoted: bool
    reason: str


def held_out_rows(ingest_dir: str | Path, split_dir: str | Path) -> pa.Table:
    """The raw text of a prepared dataset's test split (canonical schema, kept rows only)."""
    tables = []
    for part in partitions(ingest_dir):
        table = with_split(part, split_dir)
        tables.append(table.filter(pc.and_(pc.equal(table["split"], "test"), pc.is_null(table["reject"]))))
    return pa.concat_tables(tables)


def accuracy(bundle_dir: str | Path, rows: pa.Table) -> float:
    """Share of `rows` whose label the bundle predicts; a row it rejects counts as wrong."""
    bundle = load_bundle(bundle_dir)
    settings = ScoringSettings(bundle=str(bundle_dir), version=bundle.version, top_k=1,
                               max_length=bundle.max_length or DEFAULT_MAX_LENGTH)
    scores, _ = score_table(rows, bundle, settings)
    truth = rows.select(["source", "row", "label"]).rename_columns(["source", "row", "truth"])
    joined = scores.select(["source", "row", "label"]).join(truth, ["source", "row"])  # unique keys
    correct = pc.sum(pc.equal(joined["label"], joined["truth"])).as_py() or 0
    return correct / max(rows.num_rows, 1)


def promote(registry: str | Path, candidate: str | Path, ingest_dir: str | Path,
            split_dir: str | Path) -> Decision:
    """Make `candidate` the current model unless the current one scores better on the
    candidate's test rows. Returns (and records) the decision."""
    registry, candidate = Path(registry), Path(candidate)
    rows = held_out_rows(ingest_dir, split_dir)
    version = read_json(candidate / CONFIG)["version"]
    candidate_accuracy = accuracy(candidate, rows)
    incumbent = current_bundle(registry)
    current = read_json(incumbent / CONFIG)["version"] if incumbent is not None else None
    current_accuracy = accuracy(incumbent, rows) if incumbent is not None else None
    promoted = current_accuracy is None or candidate_accuracy >= current_accuracy
    if current_accuracy is None:
        reason = "first model in the registry"
    elif promoted:
        reason = (f"scores {candidate_accuracy:.4f} >= the current model's {current_accuracy:.4f} "
                  f"on the same {rows.num_rows} test rows")
    else:
        reason = (f"not promoted: scores {candidate_accuracy:.4f} < the current model's "
                  f"{current_accuracy:.4f} on the same {rows.num_rows} test rows; the current model "
                  f"({current}) stays")
    decision = Decision(time=datetime.now(timezone.utc).isoformat(timespec="seconds"), candidate=version,
                        test_rows=rows.num_rows, candidate_accuracy=candidate_accuracy, current=current,
                        current_accuracy=current_accuracy, promoted=promoted, reason=reason)
    if promoted:
        _install(registry, candidate, version, decision)
    registry.mkdir(parents=True, exist_ok=True)
    with open(registry / DECISIONS, "a", encoding="utf-8") as fh:
        fh.write(decision.model_dump_json(exclude_none=True) + "\n")
    return decision


def _install(registry: Path, candidate: Path, version: str, decision: Decision) -> None:
    """Copy the bundle in (atomically), then point `current.json` at it (atomically)."""
    target = registry / BUNDLES / version
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{version}.{uuid.uuid4().hex}.tmp")
        shutil.copytree(candidate, tmp)
        os.replace(tmp, target)
    write_json(registry / CURRENT, {"bundle": f"{BUNDLES}/{version}", "version": version,
                                    "accuracy": decision.candidate_accuracy,
                                    "test_rows": decision.test_rows, "promoted_at": decision.time})
