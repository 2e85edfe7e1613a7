"""What the flows publish to Prefect: markdown and table artifacts summarising a run, so the
Prefect UI is the run's dashboard (data, per-epoch history, per-class figures, plots)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from rnnlib_flows.render import count_table, data_summary, evaluation_summary, search_summary, stage_table, trial_rows

if TYPE_CHECKING:  # the prepare flow must not pay for importing the model's stack
    from rnnlib.modeling.evaluate import Evaluation
    from rnnlib.modeling.pipeline import TrainedModel
    from rnnlib.modeling.tune import Search
    from rnnlib.prepare.pipeline import PreparedData
    from rnnlib.scoring.output import ScoreReport
    from rnnlib.scoring.registry import Decision


def publish_prepared(data: PreparedData) -> None:
    lines = ["# prepare", "", *data_summary(data), "", *stage_table(data.stages)]
    create_markdown_artifact(
        key="prepare-summary", markdown="\n".join(lines), description="rows kept and rejected by the prepare flow"
    )


def publish_training(trained: TrainedModel) -> None:
    """Every train run's dashboard: the data and stages, the per-epoch history with the chosen
    epoch marked, the model beside the baseline, per-class figures and the plots."""
    result = trained.evaluation
    lines = ["# train: data and stages", "", *data_summary(trained.data), "", *stage_table(trained.stages)]
    create_markdown_artifact(
        key="train-data",
        markdown="\n".join(lines),
        description="rows kept and rejected, splits, and which stages this run reused",
    )
    create_table_artifact(
        key="training-history",
        table=history_table(trained.history, trained.best_epoch),
        description=f"per-epoch figures; the model kept is epoch {trained.best_epoch} "
        f"(best validation {trained.fit.manifest.monitor})"
        + ("; the bundle holds that many epochs refit on train + validation" if trained.refit else ""),
    )
    publish_evaluation(result)
    report = json.loads((Path(result.bundle) / "metrics.json").read_text(encoding="utf-8"))
    create_table_artifact(
        key="per-class", table=per_class_table(report), description="test-split precision, recall and F1 of each class"
    )
    create_markdown_artifact(
        key="evaluation-plots",
        markdown=plots_markdown(Path(result.bundle)),
        description="training curves and the test-split confusion matrix",
    )


def history_table(history: list[dict[str, Any]], best_epoch: int) -> list[dict[str, Any]]:
    """One row per epoch, rounded; `kept` marks the epoch whose weights the bundle holds."""
    columns = ("epoch", "steps", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_macro_f1", "seconds")
    return [
        {
            "kept": "<- kept" if row["epoch"] == best_epoch else "",
            **{
                name: round(row[name], 4) if isinstance(row[name], float) else row[name]
                for name in columns
                if name in row
            },
        }
        for row in history
    ]


def per_class_table(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "class": label,
            "precision": round(figures["precision"], 4),
            "recall": round(figures["recall"], 4),
            "F1": round(figures["f1-score"], 4),
            "test rows": int(figures["support"]),
        }
        for label, figures in report["per_class"].items()
    ]


def plots_markdown(bundle: Path) -> str:
    """The bundle's PNG plots embedded in the markdown itself (data URIs), so the UI shows them
    wherever the training machine's disk is."""
    from rnnlib.modeling.evaluate import CONFUSION_PNG, CURVES_PNG

    lines = ["# plots", ""]
    for title, name in (("Training curves", CURVES_PNG), ("Confusion matrix (test split)", CONFUSION_PNG)):
        if (bundle / name).exists():
            encoded = base64.b64encode((bundle / name).read_bytes()).decode("ascii")
            lines += [f"## {title}", "", f"![{title}](data:image/png;base64,{encoded})", ""]
    return "\n".join(lines + [f"Files: `{bundle}`"])


def publish_evaluation(result: Evaluation) -> None:
    create_table_artifact(
        key="evaluation-metrics",
        table=[
            {
                "metric": name,
                "model": round(model, 4),
                "baseline": None if base is None else round(base, 4),
                "model - baseline": None if base is None else round(model - base, 4),
            }
            for name, model, base in result.comparison()
        ],
        description="test-split metrics, the model beside its TF-IDF + logistic regression baseline",
    )
    create_markdown_artifact(
        key="evaluation-summary",
        markdown="\n\n".join(
            ["# evaluation", *evaluation_summary(result), f"Bundle `{result.bundle}` (version {result.version})."]
        ),
        description="test-split summary",
    )


def publish_decision(decision: Decision) -> None:
    verdict = "promoted" if decision.promoted else "not promoted"
    create_markdown_artifact(
        key="retrain-decision",
        description="promotion decision",
        markdown=(f"# retrain\n\nCandidate `{decision.candidate}`: **{verdict}** — {decision.reason}."),
    )


def publish_scoring(report: ScoreReport) -> None:
    lines = [
        "# scoring",
        "",
        f"**rows** {report.rows}: **scored** {report.scored}, "
        f"rejected {sum(report.rejected.values())}, truncated {report.truncated}; "
        f"{report.rows_per_second:.0f} rows/s, {report.mb_per_second} MB/s",
        *count_table("label", report.labels),
        *count_table("rejected because", report.rejected),
    ]
    if report.failed:
        lines += ["", "| failed | error |", "|---|---|"]
        lines += [f"| {name} | {error} |" for name, error in report.failed.items()]
    create_markdown_artifact(
        key="scoring-summary", markdown="\n".join(lines), description="rows scored and rejected by the score flow"
    )


def publish_search(search: Search, best: Evaluation, config_path: str) -> None:
    """The trial table, and the best trial's configuration on the test split beside the baseline."""
    create_table_artifact(
        key="tune-trials",
        description=f"study {search.study}: every trial, its settings and how it ended",
        table=trial_rows(search),
    )
    lines = [f"# tune: study {search.study}", "", *search_summary(search, best, config_path)]
    create_markdown_artifact(
        key="tune-summary",
        markdown="\n".join(lines),
        description="the best configuration of the search beside the baseline",
    )
