"""Prefect tasks of the `prepare` flow: each wraps one cached library stage with retries; the
Dask cluster is started only when a stage has to be built."""

from __future__ import annotations

from prefect import task

from rnnlib.config import (
    DaskConfig,
    PreprocessConfig,
    SourceConfig,
    SplitConfig,
    TensorizeConfig,
    VocabConfig,
)
from rnnlib.prepare import pipeline
from rnnlib.sources import datasets
from rnnlib.stages import StageOutput
from rnnlib_tasks.dask_clients import connector
from rnnlib_tasks.options import TASK_OPTIONS


@task(name="fetch", task_run_name="fetch", **TASK_OPTIONS)
def fetch_task(source: SourceConfig) -> SourceConfig:
    """Resolve a registered dataset to local files (mirror, cache or download)."""
    return datasets.materialize(source)


@task(name="ingest", task_run_name="ingest", **TASK_OPTIONS)
def ingest_task(source: SourceConfig, dask: DaskConfig, work_dir: str) -> StageOutput:
    return pipeline.ingest_stage(source, work_dir=work_dir, connect=connector(dask))


@task(name="preprocess", task_run_name="preprocess {cfg.level}s", **TASK_OPTIONS)
def preprocess_task(ingested: StageOutput, cfg: PreprocessConfig, dask: DaskConfig, work_dir: str) -> StageOutput:
    return pipeline.preprocess_stage(ingested, cfg=cfg, work_dir=work_dir, connect=connector(dask))


@task(name="split", task_run_name="split", **TASK_OPTIONS)
def split_task(tokens: StageOutput, labelled: bool, cfg: SplitConfig, dask: DaskConfig, work_dir: str) -> StageOutput:
    return pipeline.split_stage(tokens, labelled=labelled, cfg=cfg, work_dir=work_dir, connect=connector(dask))


@task(name="vocab", task_run_name="vocab min count {cfg.min_freq}", **TASK_OPTIONS)
def vocab_task(
    tokens: StageOutput, splits: StageOutput, labelled: bool, cfg: VocabConfig, dask: DaskConfig, work_dir: str
) -> StageOutput:
    return pipeline.vocab_stage(tokens, splits, labelled=labelled, cfg=cfg, work_dir=work_dir, connect=connector(dask))


@task(name="tensorize", task_run_name="tensorize", **TASK_OPTIONS)
def tensorize_task(
    tokens: StageOutput,
    splits: StageOutput,
    vocab: StageOutput,
    labelled: bool,
    cfg: TensorizeConfig,
    dask: DaskConfig,
    work_dir: str,
) -> StageOutput:
    return pipeline.tensorize_stage(
        tokens, splits, vocab, labelled=labelled, cfg=cfg, work_dir=work_dir, connect=connector(dask)
    )
