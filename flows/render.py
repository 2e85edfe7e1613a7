"""A run's results as text, written once: the command line prints these lines and the Prefect
artifacts (`reports`) publish them. Markdown that reads as plain text in a terminal; no Prefect
import, so a cached run's summary costs nothing to print."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the prepare flow must not pay for importing the model's stack
    from rnnlib.modeling.evaluate import Evaluation
    from rnnlib.modeling.tune import Search
    from rnnlib.prepare.pipeline import PreparedData
    from rnnlib.stages import StageOutput


def stage_table(stages: list[StageOutput]) -> list[str]:
    """Each stage, whether this run built it or reused it, and its seconds."""
    lines = ["| stage | this run | seconds |", "|---|---|---|"]
    return lines + [f"| {s.stage} | {'reused' if s.cached else 'built'} | {s.seconds:.2f} |" for s in stages]


def count_table(heading: str, counts: dict[str, int]) -> list[str]:
    """A two-column table of counts, or nothing when there are none."""
    if not counts:
        return []
    return ["", f"| {heading} | rows |", "|---|---|", *(f"| {k} | {n} |" for k, n in counts.items())]


def data_summary(data: PreparedData) -> list[str]:
    """Rows read, kept and rejected (with reasons), the splits and the vocabulary."""
    return [
        f"rows {data.rows}: kept {data.kept}, rejected {sum(data.rejected.values())}; "
        f"vocabulary {data.vocab_size} entries, {len(data.labels)} labels",
        *count_table("split", data.splits),
        *count_table("rejected because", data.rejected),
    ]


def evaluation_summary(result: Evaluation) -> list[str]:
    """The test-split figures, the baseline's beside them, an ensemble's networks, a blend's halves
    and a refit."""
    lines = [
        f"test split ({result.rows} rows): accuracy {result.accuracy:.4f}, macro F1 {result.macro.f1:.4f}, "
        f"macro recall {result.macro.recall:.4f}"
    ]
    if result.baseline is not None:
        lines.append(
            f"baseline on the same rows ({result.baseline.features}): "
            + ", ".join(
                f"{name} {base:.4f} (model {model - base:+.4f})"
                for name, model, base in result.comparison()
                if name != "weighted F1"
            )
        )
    if (members := result.ensemble_summary()) is not None:
        lines.append(f"the model is {members}")
    if (halves := result.blend_summary()) is not None:
        lines.append(f"the model is {halves}")
    if (refit := result.refit_summary()) is not None:
        lines.append(f"the model was {refit}")
    return lines


def trial_rows(search: Search) -> list[dict[str, Any]]:
    """A row per trial of a search: how it ended, its validation figure, epochs and settings."""
    return [
        {
            "trial": t.number,
            "state": t.state,
            f"validation {search.monitor}": None if t.value is None else round(t.value, 4),
            "epochs": t.epochs,
            "best epoch": t.best_epoch,
            **{k: round(v, 6) if isinstance(v, float) else v for k, v in t.params.items()},
        }
        for t in search.trials
    ]


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    """Rows as a table, its columns every key met, in order; a missing or None value is blank."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cell = lambda v: "" if v is None else str(v)  # noqa: E731
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows),
    ]


def search_summary(search: Search, best: Evaluation, config_path: str) -> list[str]:
    """The best trial's settings, its model on the test split beside the baseline, and the
    configuration file that reproduces it."""
    return [
        f"{len(search.trials)} trials; the best, trial {search.best.number}, reached validation "
        f"{search.monitor} {search.best.value:.4f} with:",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in search.best.params.items()),
        "",
        *evaluation_summary(best),
        "",
        f"`rnnlib train --config {config_path}` reproduces it (bundle `{best.bundle}`).",
    ]
