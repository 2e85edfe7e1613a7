"""The `train` flow: prepare -> [word vectors] -> [language model] -> fit, [wide], baseline -> evaluate,
every stage a task cached by content."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture

from rnnlib.config import TrainFlowConfig
from rnnlib.modeling.pipeline import TrainedModel, with_encoder, with_vectors
from rnnlib.stages import StageOutput, holding_outputs
from rnnlib_flows.prepare import prepare_stages
from rnnlib_flows.reports import publish_training
from rnnlib_tasks.train import (
    baseline_task,
    evaluate_task,
    fit_task,
    language_model_task,
    track_task,
    vectors_task,
    wide_task,
)


def _result(future: PrefectFuture[StageOutput] | None) -> StageOutput | None:
    return None if future is None else future.result()


@flow(name="train")
def train_flow(config: TrainFlowConfig = TrainFlowConfig()) -> TrainedModel:
    """Prepare the data, train a model, evaluate it on the test split and write its bundle."""
    with holding_outputs():  # until the run ends, `prune` leaves what it made or reused
        data = prepare_stages(config)
        vectors = (
            vectors_task(data, config.pretrain, config.model.embedding_dim, config.train.seed, config.work_dir)
            if config.pretrain.vectors
            else None
        )
        model = with_vectors(config.model, vectors, config.pretrain)
        language_model = (
            language_model_task(
                data,
                model,
                config.pretrain,
                config.tensorize.max_length,
                config.train.batch_size,
                config.train.seed,
                config.train.device,
                config.work_dir,
            )
            if config.pretrain.encoder
            else None
        )
        model = with_encoder(model, language_model)
        # the baseline and the wide half need only the data: submitted, they run beside the fit
        wide = (
            wide_task.submit(data, config.model.ngram_buckets, config.train.seed, config.work_dir)
            if config.model.wide
            else None
        )
        baseline = (
            baseline_task.submit(data, config.preprocess.level, config.work_dir) if config.evaluate.baseline else None
        )
        fitted = fit_task(data.tensorize, model, config.train, config.work_dir)
        wide, baseline = _result(wide), _result(baseline)
        evaluated = evaluate_task(
            data,
            fitted,
            baseline,
            config.preprocess,
            model,
            config.tensorize.max_length,
            config.work_dir,
            wide,
            config.train.batch_size,
        )
        trained = TrainedModel(
            data=data,
            vectors=vectors,
            language_model=language_model,
            fit=fitted,
            wide=wide,
            baseline=baseline,
            evaluate=evaluated,
        )
        if config.tracking.uri:
            trained = trained.model_copy(update={"tracking_run": track_task(trained, config)})
        result = trained.evaluation
        get_run_logger().info(
            "test accuracy %.4f, macro F1 %.4f; bundle in %s", result.accuracy, result.macro.f1, result.bundle
        )
        publish_training(trained)
        return trained
