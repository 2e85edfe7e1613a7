"""The model registry: the newest model that passed evaluation is the one scoring uses.

    <registry>/current.json          which bundle is current, and why
    <registry>/bundles/<version>/    promoted bundles (never modified once written)
    <registry>/decisions.jsonl       every promotion decision, kept or replaced

A candidate replaces the current model only if it scores at least as well on the same test
rows: the candidate's own test split, raw text scored by both models through the scoring path,
so each model applies its own preprocessing and vocabulary.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from rnnlib.bundle import CONFIG, load_bundle
from rnnlib.cluster import partitions
from rnnlib.scoring import DEFAULT_MAX_LENGTH, ScoringSettings, score_table
from rnnlib.split import with_split
from rnnlib.storage import read_json, write_json

CURRENT, BUNDLES, DECISIONS = "current.json", "bundles", "decisions.jsonl"


def current_bundle(registry: str | Path) -> Path | None:
    """The current model's bundle, or None for an empty registry."""
    pointer = Path(registry) / CURRENT
    return Path(registry) / read_json(pointer)["bundle"] if pointer.is_file() else None


def resolve_bundle(path: str | Path) -> Path:
    """A bundle directory as given, or a registry's current bundle."""
    path = Path(path)
    if (path / CURRENT).is_file():
        return current_bundle(path)
    return path


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
            split_dir: str | Path) -> dict[str, Any]:
    """Make `candidate` the current model unless the current one scores better on the
    candidate's test rows. Returns (and records) the decision."""
    registry, candidate = Path(registry), Path(candidate)
    rows = held_out_rows(ingest_dir, split_dir)
    version = read_json(candidate / CONFIG)["version"]
    decision: dict[str, Any] = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "candidate": version,
        "test_rows": rows.num_rows, "candidate_accuracy": accuracy(candidate, rows),
    }
    incumbent = current_bundle(registry)
    if incumbent is not None:
        decision["current"] = read_json(incumbent / CONFIG)["version"]
        decision["current_accuracy"] = accuracy(incumbent, rows)
    promoted = incumbent is None or decision["candidate_accuracy"] >= decision["current_accuracy"]
    decision["promoted"] = promoted
    if incumbent is None:
        decision["reason"] = "first model in the registry"
    elif promoted:
        decision["reason"] = (f"scores {decision['candidate_accuracy']:.4f} >= the current model's "
                              f"{decision['current_accuracy']:.4f} on the same {rows.num_rows} test rows")
    else:
        decision["reason"] = (f"not promoted: scores {decision['candidate_accuracy']:.4f} < the current "
                              f"model's {decision['current_accuracy']:.4f} on the same {rows.num_rows} "
                              f"test rows; the current model ({decision['current']}) stays")
    if promoted:
        _install(registry, candidate, version, decision)
    registry.mkdir(parents=True, exist_ok=True)
    with open(registry / DECISIONS, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(decision) + "\n")
    return decision


def _install(registry: Path, candidate: Path, version: str, decision: dict[str, Any]) -> None:
    """Copy the bundle in (atomically), then point `current.json` at it (atomically)."""
    target = registry / BUNDLES / version
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{version}.{uuid.uuid4().hex}.tmp")
        shutil.copytree(candidate, tmp)
        os.replace(tmp, target)
    write_json(registry / CURRENT, {"bundle": f"{BUNDLES}/{version}", "version": version,
                                    "accuracy": decision["candidate_accuracy"],
                                    "test_rows": decision["test_rows"], "promoted_at": decision["time"]})
