"""Evaluation on a held-out split: scikit-learn metrics, a confusion matrix and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix  # noqa: E402

from rnnlib.data import ShardBatches  # noqa: E402
from rnnlib.model import RNNClassifier  # noqa: E402


@torch.no_grad()
def predict(model: RNNClassifier, batches: ShardBatches, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(true labels, predicted labels) over every batch."""
    model.eval()
    truth, predicted = [], []
    for batch in batches:
        batch = batch.to(device)
        predicted.append(model(batch.ids, batch.lengths).argmax(1).cpu().numpy())
        truth.append(batch.labels.cpu().numpy())
    return np.concatenate(truth), np.concatenate(predicted)


def metrics(truth: np.ndarray, predicted: np.ndarray, labels: list[str]) -> dict[str, Any]:
    report = classification_report(truth, predicted, labels=range(len(labels)), target_names=labels,
                                   output_dict=True, zero_division=0)
    return {
        "rows": int(len(truth)),
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro": {k: report["macro avg"][k] for k in ("precision", "recall", "f1-score")},
        "weighted": {k: report["weighted avg"][k] for k in ("precision", "recall", "f1-score")},
        "per_class": {name: report[name] for name in labels},
        "confusion_matrix": confusion_matrix(truth, predicted, labels=range(len(labels))).tolist(),
        "labels": labels,
    }


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
