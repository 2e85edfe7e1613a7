"""rnnlib: recurrent text classifiers as a pipeline. The library alone, free of orchestration
(the Prefect flows and tasks wrap it); its parts, in pipeline order:

    sources/   where text comes from: datasets, inputs, readers
    prepare/   ingest -> preprocess -> split -> vocab -> tensorize   (prepare.pipeline.prepare)
    modeling/  model, batches, train, evaluate, bundle               (modeling.pipeline.train_model)
    scoring/   a bundle over new text, resumable; the model registry  (scoring.pipeline.score)

beside `config` (every setting, typed), `errors`, `stages` (content-addressed stage outputs) and
`common/` (storage, fingerprints, Dask, accounting).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The public surface, imported on first use: `import rnnlib.config` stays light (the prepare flow
# never loads torch), while `from rnnlib import Predictor` works as users expect.
PUBLIC: dict[str, str | tuple[str, str]] = {
    "load_config": "rnnlib.config",
    "PrepareConfig": "rnnlib.config",
    "TrainFlowConfig": "rnnlib.config",
    "ScoreConfig": "rnnlib.config",
    "InputSpec": "rnnlib.config",
    # `prepare` is the subpackage's name: the function is `prepare_data`
    "prepare_data": ("rnnlib.prepare.pipeline", "prepare"),
    "PreparedData": "rnnlib.prepare.pipeline",
    "train_model": "rnnlib.modeling.pipeline",
    "TrainedModel": "rnnlib.modeling.pipeline",
    "tune": "rnnlib.modeling.tune",
    "score": "rnnlib.scoring.pipeline",
    "ScoreReport": "rnnlib.scoring.output",
    "Predictor": "rnnlib.scoring.predictor",
    "Prediction": "rnnlib.scoring.predictor",
    "InputError": "rnnlib.errors",
}
__all__ = sorted(PUBLIC)

if TYPE_CHECKING:
    from rnnlib.config import (
        InputSpec as InputSpec,
    )
    from rnnlib.config import (
        PrepareConfig as PrepareConfig,
    )
    from rnnlib.config import (
        ScoreConfig as ScoreConfig,
    )
    from rnnlib.config import (
        TrainFlowConfig as TrainFlowConfig,
    )
    from rnnlib.config import (
        load_config as load_config,
    )
    from rnnlib.errors import InputError as InputError
    from rnnlib.modeling.pipeline import TrainedModel as TrainedModel
    from rnnlib.modeling.pipeline import train_model as train_model
    from rnnlib.modeling.tune import tune as tune
    from rnnlib.prepare.pipeline import PreparedData as PreparedData
    from rnnlib.prepare.pipeline import prepare as prepare_data  # noqa: F401 - the public name
    from rnnlib.scoring.output import ScoreReport as ScoreReport
    from rnnlib.scoring.pipeline import score as score
    from rnnlib.scoring.predictor import Prediction as Prediction
    from rnnlib.scoring.predictor import Predictor as Predictor


def __getattr__(name: str) -> Any:
    if name not in PUBLIC:
        raise AttributeError(f"module 'rnnlib' has no attribute {name!r}")
    where = PUBLIC[name]
    module, attribute = where if isinstance(where, tuple) else (where, name)
    return getattr(importlib.import_module(module), attribute)
