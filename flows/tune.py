"""The `tune` flow: prepare -> [word vectors] -> search (trials on the validation split) -> the
best configuration trained (its fit reused from the search) and evaluated on the test split
beside the baseline, as the `train` flow does. The best configuration is written as YAML that
`rnnlib train --config` reproduces."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from rnnlib.common.storage import write_text
from rnnlib.config import TrainFlowConfig, commented_yaml
from rnnlib.modeling.pipeline import TrainedModel
from rnnlib.modeling.tune import BEST_CONFIG, Search
from rnnlib.stages import holding_outputs
from rnnlib_flows.prepare import prepare_as_tasks
from rnnlib_flows.reports import publish_search
from rnnlib_flows.train import train_flow
from rnnlib_tasks.train import vectors_task
from rnnlib_tasks.tune import search_task


@flow(name="tune")
def tune_flow(config: TrainFlowConfig = TrainFlowConfig()) -> tuple[Search, TrainedModel, str]:
    """Search the settings of `tune.space` on the validation split; train and evaluate the best.
    Returns the search, the trained best model and where its YAML is."""
    with holding_outputs():  # until the run ends, `prune` leaves what it made or reused
        data = prepare_as_tasks(config)
        pretrain, work, dim = config.pretrain, config.work_dir, config.model.embedding_dim
        vectors = (
            vectors_task(data, cfg=pretrain, dim=dim, seed=pretrain.seed, work_dir=work) if pretrain.vectors else None
        )
        search = search_task(config, data, vectors)
        best = search.config()
        trained = train_flow(best)
        path = Path(config.work_dir) / "tune" / search.study / BEST_CONFIG
        write_text(path, commented_yaml(best.model_copy(update={"tune": config.tune})))
        get_run_logger().info(
            "best of %d trials: trial %d, validation %s %.4f; test accuracy %.4f; config in %s",
            len(search.trials),
            search.best.number,
            search.monitor,
            search.best.value,
            trained.evaluation.accuracy,
            path,
        )
        publish_search(search, trained.evaluation, str(path))
        return search, trained, str(path)
