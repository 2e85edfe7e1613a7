"""Prefect tasks of the data stages: each is one library stage with retries; the Dask cluster
is started only when a stage has to be built (its `connect`)."""

from __future__ import annotations

from prefect import task

from rnnlib.prepare import pipeline
from rnnlib.sources import datasets
from rnnlib_tasks.options import TASK_OPTIONS
from rnnlib_tasks.runner import PrefectTasks

# resolve a registered dataset to local files (mirror, cache or download)
fetch_task = task(name="fetch", task_run_name="fetch", **TASK_OPTIONS)(datasets.materialize)
ingest_task = task(name="ingest", task_run_name="ingest", **TASK_OPTIONS)(pipeline.ingest_stage)
preprocess_task = task(name="preprocess", task_run_name="preprocess {cfg.level}s", **TASK_OPTIONS)(
    pipeline.preprocess_stage
)
split_task = task(name="split", task_run_name="split", **TASK_OPTIONS)(pipeline.split_stage)
vocab_task = task(name="vocab", task_run_name="vocab min count {cfg.min_freq}", **TASK_OPTIONS)(pipeline.vocab_stage)
tensorize_task = task(name="tensorize", task_run_name="tensorize", **TASK_OPTIONS)(pipeline.tensorize_stage)

PREPARE_TASKS = PrefectTasks([fetch_task, ingest_task, preprocess_task, split_task, vocab_task, tensorize_task])
