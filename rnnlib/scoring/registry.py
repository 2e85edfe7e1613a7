"""The model registry: the newest model that passed evaluation is the one scoring uses.

    <registry>/current.json          which bundle is current, and why
    <registry>/bundles/<version>/    promoted bundles (never modified once written)
    <registry>/decisions.jsonl       every decision: promoted or not, by evaluation or by hand
    <registry>/.lock                 held while the registry changes: one change at a time

A candidate replaces the current model only if it scores at least as well on the same test
rows: the candidate's own test split, raw text scored by both models through the scoring path,
so each model applies its own preprocessing and vocabulary.
"""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from rnnlib.common.locks import file_lock
from rnnlib.common.storage import durable_replace, partitions, read_json, write_json
from rnnlib.errors import InputError
from rnnlib.modeling.bundle import CONFIG, CURRENT, current_bundle
from rnnlib.prepare.split import with_split
from rnnlib.scoring.partition import DEFAULT_MAX_LENGTH, ScoringSettings, load_model, score_table

BUNDLES, DECISIONS, LOCK = "bundles", "decisions.jsonl", ".lock"


class Decision(BaseModel):
    """One promotion decision, as `decisions.jsonl` records it."""

    time: str
    candidate: str  # the candidate bundle's version
    test_rows: int | None = None  # None: a change made by hand, not by evaluation
    candidate_accuracy: float | None = None
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
    loaded = load_model(bundle_dir)  # fp32: the model as evaluated
    bundle = loaded.bundle
    settings = ScoringSettings(
        bundle=str(bundle_dir), version=bundle.version, top_k=1, max_length=bundle.max_length or DEFAULT_MAX_LENGTH
    )
    scores, _ = score_table(rows, loaded, settings)
    truth = rows.select(["source", "row", "label"]).rename_columns(["source", "row", "truth"])
    joined = scores.select(["source", "row", "label"]).join(truth, ["source", "row"])  # unique keys
    correct = pc.sum(pc.equal(joined["label"], joined["truth"])).as_py() or 0
    return correct / max(rows.num_rows, 1)


def promote(registry: str | Path, candidate: str | Path, ingest_dir: str | Path, split_dir: str | Path) -> Decision:
    """Make `candidate` the current model unless the current one scores better on the
    candidate's test rows. Returns (and records) the decision."""
    registry, candidate = Path(registry), Path(candidate)
    with file_lock(registry / LOCK):  # the incumbent cannot change while it is compared
        return _promote(registry, candidate, held_out_rows(ingest_dir, split_dir))


def _promote(registry: Path, candidate: Path, rows: pa.Table) -> Decision:
    version = read_json(candidate / CONFIG)["version"]
    candidate_accuracy = accuracy(candidate, rows)
    incumbent = current_bundle(registry)
    current = read_json(incumbent / CONFIG)["version"] if incumbent is not None else None
    current_accuracy = accuracy(incumbent, rows) if incumbent is not None else None
    promoted = current_accuracy is None or candidate_accuracy >= current_accuracy
    if current_accuracy is None:
        reason = "first model in the registry"
    elif promoted:
        reason = (
            f"scores {candidate_accuracy:.4f} >= the current model's {current_accuracy:.4f} "
            f"on the same {rows.num_rows} test rows"
        )
    else:
        reason = (
            f"not promoted: scores {candidate_accuracy:.4f} < the current model's "
            f"{current_accuracy:.4f} on the same {rows.num_rows} test rows; the current model "
            f"({current}) stays"
        )
    decision = Decision(
        time=_now(),
        candidate=version,
        test_rows=rows.num_rows,
        candidate_accuracy=candidate_accuracy,
        current=current,
        current_accuracy=current_accuracy,
        promoted=promoted,
        reason=reason,
    )
    if promoted:
        _install(registry, candidate, version, decision)
    _record(registry, decision)
    return decision


def _record(registry: Path, decision: Decision) -> None:
    registry.mkdir(parents=True, exist_ok=True)
    with open(registry / DECISIONS, "a", encoding="utf-8") as fh:
        fh.write(decision.model_dump_json(exclude_none=True) + "\n")


def decisions(registry: str | Path) -> list[Decision]:
    path = Path(registry) / DECISIONS
    if not path.is_file():
        return []
    return [Decision.model_validate_json(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def trained_on(paths: list[str | Path]) -> set[str]:
    """Stage keys of the data the given bundles, or the bundles of the given registries, were
    trained on (what `rnnlib cache prune --keep-for` keeps)."""
    for path in map(Path, paths):  # a typo would keep nothing, and prune what it meant to keep
        if not (path / CONFIG).is_file() and not (path / BUNDLES).is_dir():
            raise InputError(f"not a bundle or registry folder (no {CONFIG}, no {BUNDLES}/)", file=str(path))
    configs = [c for p in map(Path, paths) for c in [p / CONFIG, *(p / BUNDLES).glob(f"*/{CONFIG}")] if c.is_file()]
    return {key for c in configs for key in read_json(c)["data"].values()}


class RegisteredModel(BaseModel):
    """A bundle in the registry, as `rnnlib models list` shows it."""

    version: str
    current: bool
    promoted_at: str | None  # when it last became current
    accuracy: float | None  # on its evaluation's test rows, when promoted by evaluation


def list_models(registry: str | Path) -> list[RegisteredModel]:
    registry = Path(registry)
    current = read_json(registry / CURRENT)["version"] if (registry / CURRENT).is_file() else None
    promoted = [d for d in decisions(registry) if d.promoted]
    last = {d.candidate: d for d in promoted}
    evaluated = {d.candidate: d.candidate_accuracy for d in promoted if d.candidate_accuracy is not None}
    first = {v: i for i, v in reversed(list(enumerate(d.candidate for d in promoted)))}
    folders = [f.name for f in (registry / BUNDLES).iterdir()] if (registry / BUNDLES).is_dir() else []
    return [
        RegisteredModel(
            version=v, current=v == current, promoted_at=last[v].time if v in last else None, accuracy=evaluated.get(v)
        )
        for v in sorted((v for v in folders if not v.startswith(".")), key=lambda v: (first.get(v, 1e9), v))
    ]


def set_current(registry: str | Path, version: str, reason: str) -> Decision:
    """Make a bundle already in the registry current, by hand; recorded like any decision."""
    registry = Path(registry)
    with file_lock(registry / LOCK):
        if not (registry / BUNDLES / version / CONFIG).is_file():
            known = [m.version for m in list_models(registry)]
            raise InputError(f"no bundle {version!r} in this registry (it holds {known})", file=str(registry))
        previous = read_json(registry / CURRENT)["version"] if (registry / CURRENT).is_file() else None
        decision = Decision(time=_now(), candidate=version, current=previous, promoted=True, reason=reason)
        _point_to(registry, version, decision)
        _record(registry, decision)
        return decision


def rollback(registry: str | Path) -> Decision:
    """Make the model that was current before the current one current again."""
    history = [d.candidate for d in decisions(registry) if d.promoted]
    earlier = [v for v in history[:-1] if v != (history[-1] if history else None)]
    if not earlier:
        raise InputError("nothing to roll back to: no earlier model was ever current", file=str(registry))
    return set_current(registry, earlier[-1], f"rolled back from {history[-1]} (rnnlib models rollback)")


def _install(registry: Path, candidate: Path, version: str, decision: Decision) -> None:
    """Copy the bundle in (atomically), then point `current.json` at it (atomically)."""
    target = registry / BUNDLES / version
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{version}.{uuid.uuid4().hex}.tmp")
        shutil.copytree(candidate, tmp)
        durable_replace(tmp, target)
    _point_to(registry, version, decision)


def _point_to(registry: Path, version: str, decision: Decision) -> None:
    write_json(
        registry / CURRENT,
        {
            "bundle": f"{BUNDLES}/{version}",
            "version": version,
            "accuracy": decision.candidate_accuracy,
            "test_rows": decision.test_rows,
            "promoted_at": decision.time,
        },
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
