"""Evaluation of a saved bundle on a held-out split: scikit-learn metrics, a confusion matrix and
PNG plots, written into the bundle. The saved bundle is what is evaluated, so the figures are
those of exactly what users will load."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from rnnlib.common.accounting import AccountingError  # noqa: E402
from rnnlib.common.storage import write_json  # noqa: E402
from rnnlib.modeling.baseline import BaselineResult  # noqa: E402
from rnnlib.modeling.batches import ShardBatches  # noqa: E402
from rnnlib.modeling.bundle import METRICS, load_bundle  # noqa: E402
from rnnlib.modeling.device import DeviceChoice, default_batch_rows, pick_device  # noqa: E402
from rnnlib.modeling.engines import GRAPH_ENGINES, available_engines  # noqa: E402
from rnnlib.modeling.export import engine_graph, exported_graphs  # noqa: E402
from rnnlib.modeling.inference import EngineChoice, choose_engine, engines_for, held_out_ids  # noqa: E402
from rnnlib.modeling.metrics import Averages, metrics  # noqa: E402
from rnnlib.modeling.model import RNNClassifier, SeedEnsemble  # noqa: E402
from rnnlib.modeling.train import RefitManifest  # noqa: E402
from rnnlib.modeling.wide import Blend  # noqa: E402

CONFUSION_PNG, CURVES_PNG = "confusion.png", "curves.png"


class Evaluation(BaseModel):
    """A bundle's headline figures on the test split; the full report is its `metrics.json`."""

    bundle: str
    version: str
    rows: int
    accuracy: float
    macro: Averages
    weighted: Averages
    baseline: BaselineResult | None = None  # TF-IDF + logistic regression on the same rows
    engines: EngineChoice | None = None  # each scoring engine against fp32, and what `auto` picks
    blend: Blend | None = None  # wide and deep: the weight, and each half alone
    refit: Refit | None = None  # trained again on train + validation: what, and the chosen fit's figure
    ensemble: list[Member] | None = None  # a seed ensemble's networks, each alone

    def blend_summary(self) -> str | None:
        """One line on a wide-and-deep model's halves, or None for a recurrent model alone."""
        blend = self.blend
        if blend is None:
            return None
        return (
            f"wide and deep, {blend.weight:.2f} x the recurrent half: recurrent alone {blend.deep_test_accuracy:.4f}, "
            f"linear TF-IDF alone {blend.wide_test_accuracy:.4f} (test accuracy)"
        )

    def refit_summary(self) -> str | None:
        """One line on a refit model, or None when it was not refit."""
        refit = self.refit
        if refit is None:
            return None
        length = "each network" if self.ensemble else f"{refit.epochs} epochs, {refit.steps} steps"
        return (
            f"refit on train + validation ({refit.rows} rows, {length}); the run "
            f"chosen on validation, before it: accuracy {refit.chosen_test_accuracy:.4f}"
        )

    def ensemble_summary(self) -> str | None:
        """One line on a seed ensemble's networks, or None for one network."""
        if not self.ensemble:
            return None
        alone = ", ".join(f"{m.test_accuracy:.4f}" for m in self.ensemble)
        return (
            f"an ensemble of {len(self.ensemble)} seeds, {self.accuracy:.4f}; "
            f"each network alone: {alone} (test accuracy)"
        )

    def comparison(self) -> list[tuple[str, float, float | None]]:
        """(metric, model, baseline or None) for the headline metrics."""
        base = self.baseline
        return [
            ("accuracy", self.accuracy, base.accuracy if base else None),
            ("macro F1", self.macro.f1, base.macro.f1 if base else None),
            ("macro recall", self.macro.recall, base.macro.recall if base else None),
            ("weighted F1", self.weighted.f1, base.weighted.f1 if base else None),
        ]


@torch.no_grad()
def predict(
    model: RNNClassifier | SeedEnsemble, batches: ShardBatches, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """(true labels, predicted labels) over every batch."""
    model.eval()
    truth, predicted = [], []
    for batch in batches:
        batch = batch.to(device)
        predicted.append(model(batch.ids, batch.lengths).argmax(1).cpu().numpy())
        truth.append(batch.labels.cpu().numpy())
    return np.concatenate(truth), np.concatenate(predicted)


def plot_confusion(result: dict[str, Any], path: Path) -> None:
    matrix = np.array(result["confusion_matrix"], dtype=float)
    normalised = matrix / matrix.sum(axis=1, keepdims=True).clip(min=1)
    size = max(4.0, 0.45 * len(result["labels"]) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(result["labels"]))
    ax.set_xticks(ticks, result["labels"], rotation=90)
    ax.set_yticks(ticks, result["labels"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {result['accuracy']:.3f}, macro F1 {result['macro']['f1-score']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax in (("loss", loss_ax), ("acc", acc_ax)):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], marker="o", label="train")
        ax.plot(epochs, [h[f"val_{key}"] for h in history], marker="o", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class Selection(BaseModel):
    """Which epoch's weights the bundle holds: the best by the monitored validation figure."""

    monitor: str
    epoch: int
    value: float


class Member(BaseModel):
    """One network of a seed ensemble (`model.ensemble`)."""

    seed: int
    pretrain_seed: int | None = None  # its word vectors' / language model's seed; None: nothing pretrained
    selection: Selection  # its epoch, chosen on validation
    refit_epochs: int | None = None  # with `train.refit`: the epochs it was trained again for
    test_accuracy: float | None = None  # the bundle with this network alone; set by the evaluation


class Refit(BaseModel):
    """A model trained again on train + validation after the chosen fit (`train.refit`)."""

    epochs: int
    steps: int
    rows: int  # training rows an epoch: train + validation
    chosen_test_accuracy: float  # the chosen fit's own (blended) model on the same test rows

    @classmethod
    def of(cls, manifest: RefitManifest, *, chosen_test_accuracy: float) -> Refit:
        return cls(
            epochs=manifest.epochs,
            steps=manifest.steps,
            rows=manifest.rows,
            chosen_test_accuracy=round(chosen_test_accuracy, 4),
        )


def accuracy_on_test(model: RNNClassifier | SeedEnsemble, tensors_dir: str | Path) -> float:
    """`model`'s accuracy on the test split's shards."""
    truth, predicted = predict(model, ShardBatches(Path(tensors_dir) / "test", 512, shuffle=False), torch.device("cpu"))
    return float((truth == predicted).mean())


def evaluate_bundle(
    bundle_dir: str | Path,
    test_dir: str | Path,
    *,
    history: list[dict[str, Any]],
    selection: Selection,
    baseline: BaselineResult | None = None,
    blend: Blend | None = None,
    refit: Refit | None = None,
    members: list[Member] | None = None,
    device: DeviceChoice = "auto",
    graph_engines: bool = True,
) -> Evaluation:
    """Score `test_dir`'s shards with the bundle; write `metrics.json` (with the training
    `history` and the epoch `selection`, the `baseline` fitted on the same rows and how each
    scoring engine compares with fp32, the `graph_engines` too; for a wide-and-deep model the
    `blend` and each half's test accuracy alone; for a seed ensemble, its `members` and each one's
    test accuracy alone), the confusion matrix and the learning curves
    into the bundle."""
    bundle_dir = Path(bundle_dir)
    target = pick_device(device)
    bundle = load_bundle(bundle_dir, target)
    truth, predicted = predict(bundle.model, ShardBatches(test_dir, 512, shuffle=False), target)
    result = metrics(truth, predicted, list(bundle.labels.labels))
    if baseline is not None and baseline.rows != result["rows"]:
        raise AccountingError(f"the baseline scored {baseline.rows} test rows, the model {result['rows']}")
    engines = measure_engines(
        bundle_dir, bundle.model, held_out_ids(test_dir), len(bundle.labels.labels), graphs=graph_engines
    )
    if blend is not None:
        blend = blend.model_copy(update=halves_alone(bundle.model, test_dir, target))
    if members is not None:
        members = members_alone(bundle.model, members, test_dir, target)
    report = {
        **result,
        "history": history,
        "selection": selection.model_dump(),
        "blend": blend.model_dump(mode="json") if blend else None,
        "refit": refit.model_dump(mode="json") if refit else None,
        "ensemble": [m.model_dump(mode="json") for m in members] if members else None,
        "engines": engines.model_dump(mode="json"),
        "baseline": baseline.model_dump(mode="json", by_alias=True) if baseline else None,
    }
    write_json(bundle_dir / METRICS, report)
    plot_confusion(result, bundle_dir / CONFUSION_PNG)
    plot_curves(history, bundle_dir / CURVES_PNG)
    return Evaluation(
        bundle=str(bundle_dir),
        version=bundle.version,
        baseline=baseline,
        engines=engines,
        blend=blend,
        refit=refit,
        ensemble=members,
        **{k: result[k] for k in ("rows", "accuracy", "macro", "weighted")},
    )


def measure_engines(
    bundle_dir: Path, model: RNNClassifier | SeedEnsemble, ids: pa.ListArray, num_classes: int, *, graphs: bool
) -> EngineChoice:
    """The scoring engines on the CPU, on test rows: agreement with fp32 and speed, and which
    `engine: auto` would pick among them on this CPU. PyTorch's always; with `graphs` ONNX
    Runtime's and OpenVINO's too where installed, on the bundle exported into a scratch folder
    (scoring exports its own), so the card covers what `auto` may run. A model the exporter
    refuses is measured on PyTorch's engines, and the card says why."""
    cpu = torch.device("cpu")
    wanted = [name for name in available_engines(cpu) if name in GRAPH_ENGINES] if graphs else []
    with tempfile.TemporaryDirectory(prefix="rnnlib-engines-") as scratch:
        onnx = Path(scratch) / "model.onnx"
        graphs, refused = exported_graphs(wanted, lambda engine: engine_graph(bundle_dir, engine, onnx))
        choice = choose_engine(engines_for(model, graphs), ids, num_classes, default_batch_rows(cpu))
    return choice.leaving_out(refused)


def halves_alone(model: RNNClassifier | SeedEnsemble, test_dir: str | Path, device: torch.device) -> dict[str, float]:
    """The test accuracy of the deep and of the wide half of a blended model, each alone."""
    share = float(model.blend)
    accuracy = {}
    for half, weight in (("deep_test_accuracy", 1.0), ("wide_test_accuracy", 0.0)):
        model.blend.fill_(weight)
        truth, predicted = predict(model, ShardBatches(test_dir, 512, shuffle=False), device)
        accuracy[half] = round(float((truth == predicted).mean()), 4)
    model.blend.fill_(share)
    return accuracy


def members_alone(
    model: SeedEnsemble, members: list[Member], test_dir: str | Path, device: torch.device
) -> list[Member]:
    """Each network of a seed ensemble scored alone on the test split (with the linear half at
    the same blend): what a single seed would have given, beside what the ensemble gives."""
    scored = []
    for index, member in enumerate(members):
        truth, predicted = predict(model.alone(index), ShardBatches(test_dir, 512, shuffle=False), device)
        scored.append(member.model_copy(update={"test_accuracy": round(float((truth == predicted).mean()), 4)}))
    return scored
