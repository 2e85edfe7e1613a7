"""Prefect tasks of the `prepare` flow: thin wrappers adding caching and retries to rnnlib."""

from __future__ import annotations

from prefect import task

from rnnlib import datasets, ingest, preprocess, split, tensorize, vocab
from rnnlib.config import (
    DaskConfig, PreprocessConfig, SourceConfig, SplitConfig, TensorizeConfig, VocabConfig,
)
from tasks.caching import STAGE_TASK, StageOutput, run_stage
from tasks.dask_clients import get_client
from tasks.retries import IO_RETRIES



@task(name="fetch", **IO_RETRIES)
def fetch_task(source: SourceConfig) -> SourceConfig:
    """Resolve a registered dataset to local files (mirror, cache or download)."""
    return datasets.materialize(source)


@task(name="ingest", **STAGE_TASK)
def ingest_task(source: SourceConfig, dask: DaskConfig, work_dir: str) -> StageOutput:
    return run_stage("ingest", locals(), lambda out: ingest.ingest(source, out, get_client(dask)))


@task(name="preprocess", **STAGE_TASK)
def preprocess_task(
    ingested: StageOutput, cfg: PreprocessConfig, dask: DaskConfig, work_dir: str
) -> StageOutput:
    return run_stage(
        "preprocess", locals(),
        lambda out: preprocess.preprocess(ingested.path, out, cfg, get_client(dask)),
    )


@task(name="split", **STAGE_TASK)
def split_task(
    preprocessed: StageOutput, labelled: bool, cfg: SplitConfig, dask: DaskConfig, work_dir: str
) -> StageOutput:
    return run_stage(
        "split", locals(),
        lambda out: split.split(preprocessed.path, out, cfg, labelled, get_client(dask)),
    )


@task(name="vocab", **STAGE_TASK)
def vocab_task(
    preprocessed: StageOutput, splitted: StageOutput, fit_split: str, cfg: VocabConfig,
    dask: DaskConfig, work_dir: str,
) -> StageOutput:
    return run_stage(
        "vocab", locals(),
        lambda out: vocab.fit(preprocessed.path, splitted.path, out, cfg, fit_split, get_client(dask)),
    )


@task(name="tensorize", **STAGE_TASK)
def tensorize_task(
    preprocessed: StageOutput, splitted: StageOutput, fitted: StageOutput, labelled: bool,
    cfg: TensorizeConfig, dask: DaskConfig, work_dir: str,
) -> StageOutput:
    return run_stage(
        "tensorize", locals(),
        lambda out: tensorize.tensorize(
            preprocessed.path, splitted.path, fitted.path, out, cfg, labelled, get_client(dask)
        ),
    )
