"""The model card: a bundle's `README.md`, generated from what the bundle records, so whoever
finds a bundle can tell what it was trained on, how well it does against its baseline, and what
it is not for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rnnlib.common.storage import read_json
from rnnlib.modeling.bundle import CONFIG, METRICS
from rnnlib.modeling.evaluate import Evaluation
from rnnlib.modeling.inference import MIN_AGREEMENT
from rnnlib.modeling.wide import WideFit

CARD = "README.md"


def _settings(values: dict[str, Any]) -> list[str]:
    return [f"- `{key}`: {value}" for key, value in values.items()]


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
    ]


def _max_length(tokens: int | None) -> str:
    return f"{tokens} tokens (longer texts are truncated)" if tokens else "none (texts are read whole)"


def _engines(evaluation: Evaluation) -> list[str]:
    """Each scoring engine against fp32 on the test rows, and what `engine: auto` picks where
    the model was evaluated."""
    choice = evaluation.engines
    if choice is None:
        return []
    auto = choice.trial(choice.engine)
    measured = ", ".join(t.engine for t in choice.trials)
    return [
        "## Scoring engines",
        "",
        f"The figures above are fp32's. Scoring's `engine: auto` measures every engine installed on the "
        f"machine that scores, once, and runs the fastest that labels at least {MIN_AGREEMENT:.1%} of "
        f"the rows as fp32 does. On the CPU this model was evaluated on ({choice.cpu}; engines "
        f"{measured}) it picks **{choice.engine}**, which gives fp32's label to "
        f"{auto.labels_same:.2%} of {choice.rows} test rows. Each engine there:",
        "",
        *_table(
            ["engine", "test rows", "same label as fp32", "largest probability change", "tokens/s"],
            [
                [
                    t.engine,
                    choice.rows,
                    f"{t.labels_same:.2%}",
                    f"{t.max_probability_change:.4f}",
                    f"{t.tokens_per_second:,.0f}",
                ]  # fmt: skip
                for t in choice.trials
            ],
        ),
        "",
        *(f"Not measured: {', '.join(names)} ({why})." for why, names in _by_reason(choice.not_measured).items()),
    ]


def _by_reason(not_measured: dict[str, str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, why in not_measured.items():
        grouped.setdefault(why, []).append(name)
    return grouped


def _c_choice(fit: WideFit) -> str:
    if fit.chosen_by == "validation":
        return "validation accuracy"
    return f"cross-validation on the training split, mean accuracy {fit.cv_accuracy:.4f}"


def _blend(evaluation: Evaluation) -> list[str]:
    """How a wide-and-deep model's two halves are blended, and what each does alone."""
    blend = evaluation.blend
    if blend is None:
        return []
    return [
        "## Wide and deep",
        "",
        f"Its probabilities are {blend.weight:.2f} x the recurrent model's + {1 - blend.weight:.2f} x "
        f"a linear TF-IDF model's over the words and hashed word bigrams (C={blend.wide.C:g}, chosen by "
        f"{_c_choice(blend.wide)}; {blend.wide.features} features seen in training), the weight even "
        "unless the validation split clearly prefers another:",
        "",
        *_table(
            ["model", "validation accuracy", "test accuracy"],
            [
                ["blend", f"{blend.val_accuracy:.4f}", f"{evaluation.accuracy:.4f}"],
                ["recurrent alone", f"{blend.deep_val_accuracy:.4f}", f"{blend.deep_test_accuracy:.4f}"],
                ["linear alone", f"{blend.wide_val_accuracy:.4f}", f"{blend.wide_test_accuracy:.4f}"],
            ],
        ),
        "",
    ]


def _ensemble(evaluation: Evaluation) -> list[str]:
    """A seed ensemble's networks, each alone beside the ensemble."""
    members = evaluation.ensemble
    if not members:
        return []
    refit = members[0].refit_epochs is not None
    pretrained = (
        f", each from its own pretraining (word vectors, language model: seeds {members[0].pretrain_seed} "
        f"to {members[-1].pretrain_seed})"
        if members[0].pretrain_seed is not None
        else ""
    )
    return [
        "## Seed ensemble",
        "",
        f"Its recurrent probabilities are the average of {len(members)} networks of the configuration above, "
        f"trained alike from seeds {members[0].seed} to {members[-1].seed}{pretrained}, each with its "
        "epoch chosen on validation" + (" and refit on its own" if refit else "") + "; the training table "
        "above is the first's. "
        "Each network alone, in the bundle's place (with the linear half at the same blend, if any), "
        "on the test split:",
        "",
        *_table(
            ["network", "epoch chosen", f"validation {members[0].selection.monitor}", "refit epochs", "test accuracy"],
            [
                *(
                    [
                        f"seed {m.seed}",
                        m.selection.epoch,
                        f"{m.selection.value:.4f}",
                        m.refit_epochs if refit else "-",
                        f"{m.test_accuracy:.4f}",
                    ]
                    for m in members
                ),
                ["**the ensemble (this bundle)**", "", "", "", f"**{evaluation.accuracy:.4f}**"],
            ],
        ),
        "",
    ]


def _refit_length(evaluation: Evaluation) -> str:
    refit = evaluation.refit
    if evaluation.ensemble:
        return "as many epochs as each network's chosen run (the table above)"
    return f"{refit.epochs} epochs ({refit.steps} optimizer steps)"


def _refit(evaluation: Evaluation) -> list[str]:
    """What a refit model was trained on, beside the chosen fit it replaced."""
    refit = evaluation.refit
    if refit is None:
        return []
    return [
        "## Refit on train + validation",
        "",
        f"After the epoch above was chosen on validation, the model was trained again from the start on the "
        f"training and validation rows together ({refit.rows} rows an epoch) for {_refit_length(evaluation)}, "
        "at the rates the chosen run used epoch by epoch"
        + (", its linear half fitted again on the same rows with the same C" if evaluation.blend else "")
        + ". The bundle holds that model; the validation figures on this card are the chosen run's.",
        "",
        *_table(
            ["model", "test accuracy"],
            [
                ["chosen on validation (train rows only)", f"{refit.chosen_test_accuracy:.4f}"],
                ["refit on train + validation (this bundle)", f"{evaluation.accuracy:.4f}"],
            ],
        ),
        "",
    ]


def model_card(bundle_dir: str | Path, evaluation: Evaluation) -> str:
    config, report = read_json(Path(bundle_dir) / CONFIG), read_json(Path(bundle_dir) / METRICS)
    labels = report["labels"]
    lines = [
        f"# Model card: {len(labels)}-class text classifier",
        "",
        f"Bundle version `{config['version']}`, made by rnnlib (code `{config['rnnlib_code']}`).",
        "",
        "## Data",
        "",
        f"- labels ({len(labels)}): {', '.join(labels)}",
        f"- labels hash `{config['labels_hash']}`, vocabulary hash `{config['vocab_hash']}`",
        *(f"- {stage} stage key `{key}`" for stage, key in config["data"].items()),
        f"- test split: {evaluation.rows} rows",
        "",
        "## Preprocessing",
        "",
        *_settings(config["preprocess"]),
        f"- maximum length: {_max_length(config['max_length'])}",
        "",
        "## Model",
        "",
        *_settings(config["model"]),
        "",
        *_training(report["history"], report["selection"]),
        *_evaluation(evaluation, report["per_class"]),
        *_ensemble(evaluation),
        *_refit(evaluation),
        *_blend(evaluation),
        *_engines(evaluation),
        *_limits(evaluation),
    ]
    return "\n".join(lines) + "\n"


def _training(history: list[dict[str, Any]], chosen: dict[str, Any]) -> list[str]:
    """The per-epoch history, the epoch whose weights the bundle holds marked."""
    return [
        "## Training",
        "",
        f"{len(history)} epochs ({sum(h['seconds'] for h in history):.0f} s of training); the weights "
        f"are those of epoch {chosen['epoch']} (marked), of the best validation {chosen['monitor']} "
        f"({chosen['value']:.4f}).",
        "",
        *_table(
            ["epoch", "train loss", "train accuracy", "validation loss", "validation accuracy", "validation macro F1"],
            [
                [
                    f"**{h['epoch']}**" if h["epoch"] == chosen["epoch"] else h["epoch"],
                    f"{h['train_loss']:.4f}",
                    f"{h['train_acc']:.4f}",
                    f"{h['val_loss']:.4f}",
                    f"{h['val_acc']:.4f}",
                    f"{h['val_macro_f1']:.4f}",
                ]
                for h in history
            ],
        ),
        "",
    ]


def _evaluation(evaluation: Evaluation, per_class: dict[str, dict[str, float]]) -> list[str]:
    """The test-split figures beside the baseline's (when there is one), then per class."""
    lines = ["## Evaluation on the test split", ""]
    base = evaluation.baseline
    if base is not None:
        lines += [
            f"Beside its baseline, {base.features} (C={base.c}), fitted on the same "
            f"{base.train_rows} {'training and validation' if base.refit else 'training'} rows and scored on "
            "the same test rows:",
            "",
            *_table(
                ["metric", "model", "baseline", "model - baseline"],
                [[name, f"{model:.4f}", f"{b:.4f}", f"{model - b:+.4f}"] for name, model, b in evaluation.comparison()],
            ),
            "",
        ]
    else:
        lines += [
            *_table(["metric", "model"], [[name, f"{model:.4f}"] for name, model, _ in evaluation.comparison()]),
            "",
        ]
    return lines + [
        "Per class:",
        "",
        *_table(
            ["label", "precision", "recall", "F1", "test rows"],
            [
                [label, f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1-score']:.3f}", int(c["support"])]
                for label, c in per_class.items()
            ],
        ),
        "",
    ]


def _limits(evaluation: Evaluation) -> list[str]:
    lines = [
        "## Intended use and limits",
        "",
        "- For text like the training data: the same language, domain and kind of text. Its "
        "preprocessing and vocabulary are in this bundle and are applied by `rnnlib score`, "
        "`rnnlib predict` and `rnnlib.scoring.predictor.Predictor`; any other consumer must "
        "reproduce them exactly.",
        "- It always answers with one of the labels above, even for text unlike anything it "
        "was trained on; its probabilities are not calibrated.",
        "- Tokens not in the vocabulary all read as `<UNK>`; texts longer than the maximum "
        "length are judged on their beginning (scoring flags them as truncated).",
        "- Per-class figures on few test rows are noisy; classes with low recall above are where it errs most.",
    ]
    base = evaluation.baseline
    if base is not None and evaluation.accuracy < base.accuracy:
        lines.append(
            "- **It scores below its baseline on this test split**: where the baseline can be used, prefer it."
        )
    return lines
