"""In-process prediction: a bundle applied to a list of texts, with no Prefect and no Dask.

The texts take the score flow's own path (the canonical table ingest makes, the bundle's
preprocessing, vocabulary and maximum length, length-sorted batches), so a text gets the same
label and probability here as in a scoring run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from rnnlib.config import EngineName
from rnnlib.modeling.bundle import Bundle, load_bundle, locate_bundle
from rnnlib.modeling.device import DeviceChoice
from rnnlib.prepare.ingest import canonicalize
from rnnlib.scoring.partition import (
    DEFAULT_MAX_LENGTH,
    LoadedModel,
    ScoringSettings,
    load_model,
    resolve_engine,
    score_table,
)


@dataclass(frozen=True)
class Prediction:
    """One text's result: its label and probability, the `top_k` best (label, probability), or
    why it could not be scored (`rejected`: empty text, no token after preprocessing)."""

    label: str | None
    probability: float | None
    top_k: list[tuple[str, float]]
    truncated: bool = False  # longer than the bundle's maximum length; its start was scored
    rejected: str | None = None


class Predictor:
    """A loaded bundle, ready to label texts in this process."""

    def __init__(self, bundle: Bundle, settings: ScoringSettings, engine: str, engine_cache: str | Path) -> None:
        self.bundle, self.settings, self.engine, self.engine_cache = bundle, settings, engine, Path(engine_cache)
        self.loaded: LoadedModel | None = None  # on the first texts: `auto` measures on them

    @property
    def labels(self) -> tuple[str, ...]:
        return self.bundle.labels.labels

    @classmethod
    def from_bundle(
        cls,
        path: str | Path,
        *,
        device: DeviceChoice = "auto",
        engine: EngineName = "auto",
        batch_size: int | None = None,
        max_length: int | None = None,
        engine_cache: str | Path | None = None,
    ) -> Predictor:
        """`path`: a bundle folder, or a model registry folder (its current model). `engine`:
        as in `score`; `auto` uses the choice measured on this machine before, else measures
        on the first texts given when there are enough of them, else runs fp32."""
        bundle_dir = locate_bundle(path)
        bundle = load_bundle(bundle_dir)
        settings = ScoringSettings(
            bundle=str(bundle_dir),
            version=bundle.version,
            top_k=1,
            max_length=max_length or bundle.max_length or DEFAULT_MAX_LENGTH,
            batch_size=batch_size,
            device=device,
        )
        return cls(bundle, settings, engine, engine_cache or os.environ.get("RNNLIB_ENGINE_CACHE", ".rnnlib/engines"))

    def predict(self, texts: Iterable[str], top_k: int = 1) -> list[Prediction]:
        """One prediction per text, in order."""
        texts = list(texts)
        frame = pd.DataFrame(
            {
                "text": pd.Series(texts, dtype=object),
                "label": None,
                "id": None,
                "source": "input",
                "row": np.arange(1, len(texts) + 1),
            }
        )
        table = canonicalize(frame, None, {}, labelled=False)
        if self.loaded is None:
            self.settings, self.engine_reason = resolve_engine(self.settings, self.engine, table, self.engine_cache)
            s = self.settings
            self.loaded = load_model(s.bundle, s.device, s.engine, s.graph)
        scores, rejects = score_table(table, self.loaded, replace(self.settings, top_k=top_k))
        out: list[Prediction | None] = [None] * len(texts)
        columns = scores.select(["row", "label", "probability", "top_k", "truncated"]).to_pydict()
        for row, label, probability, best, truncated in zip(*columns.values()):
            out[row - 1] = Prediction(label, probability, [(b["label"], b["probability"]) for b in best], truncated)
        for row, reason in zip(rejects["row"].to_pylist(), rejects["reason"].to_pylist()):
            out[row - 1] = Prediction(None, None, [], rejected=reason)
        return out  # type: ignore[return-value]  # every row is scored or rejected
