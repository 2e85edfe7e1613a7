"""Classification metrics (scikit-learn), the same for the model and its baseline."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix


class Averages(BaseModel):
    """Precision, recall and F1 averaged over classes (as scikit-learn names them)."""

    model_config = ConfigDict(populate_by_name=True)

    precision: float
    recall: float
    f1: float = Field(alias="f1-score")


def metrics(truth: np.ndarray, predicted: np.ndarray, labels: list[str]) -> dict[str, Any]:
    report = classification_report(
        truth, predicted, labels=range(len(labels)), target_names=labels, output_dict=True, zero_division=0
    )
    return {
        "rows": int(len(truth)),
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro": {k: report["macro avg"][k] for k in ("precision", "recall", "f1-score")},
        "weighted": {k: report["weighted avg"][k] for k in ("precision", "recall", "f1-score")},
        "per_class": {name: report[name] for name in labels},
        "confusion_matrix": confusion_matrix(truth, predicted, labels=range(len(labels))).tolist(),
        "labels": labels,
    }
