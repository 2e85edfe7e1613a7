"""The `prepare` flow: ingest -> preprocess -> split -> vocab -> tensorize, each stage a task
cached by content (see rnnlib.stages)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from rnnlib.config import PrepareConfig
from rnnlib.prepare.pipeline import PreparedData, UnlabelledText, unlabelled_source
from rnnlib.stages import holding_outputs
from rnnlib_flows.reports import publish_prepared
from rnnlib_tasks.dask_clients import close_clients
from rnnlib_tasks.prepare import (
    fetch_task,
    ingest_task,
    preprocess_task,
    split_task,
    tensorize_task,
    vocab_task,
)


def prepare_stages(config: PrepareConfig) -> PreparedData:
    """The prepare tasks in order (the train flow runs them too). The Dask cluster a stage starts
    when it has work to do is shut down once they are done, whatever happens."""
    work, dask = config.work_dir, config.dask
    try:
        source = fetch_task(config.source)
        ingested = ingest_task(source, dask, work)
        labelled = ingested.manifest["labelled"]
        tokens = preprocess_task(ingested, config.preprocess, dask, work)
        splits = split_task(tokens, labelled, config.split, dask, work)
        vocab = vocab_task(tokens, splits, labelled, config.vocab, dask, work)
        tensors = tensorize_task(tokens, splits, vocab, labelled, config.tensorize, dask, work)
        extra, unlabelled = unlabelled_source(source), None
        if extra is not None:  # for pretraining only
            raw = ingest_task(extra, dask, work)
            unlabelled = UnlabelledText(ingest=raw, preprocess=preprocess_task(raw, config.preprocess, dask, work))
    finally:
        close_clients()
    return PreparedData(
        ingest=ingested, preprocess=tokens, split=splits, vocab=vocab, tensorize=tensors, unlabelled=unlabelled
    )


@flow(name="prepare")
def prepare_flow(config: PrepareConfig = PrepareConfig()) -> PreparedData:
    """Turn labelled text into tensor shards; returns where everything is and what was kept."""
    with holding_outputs():  # until the run ends, `prune` leaves what it made or reused
        data = prepare_stages(config)
        get_run_logger().info(
            "prepared %s rows: kept %s %s, rejected %s; shards in %s",
            data.rows,
            data.kept,
            data.splits,
            data.rejected or "none",
            data.tensorize.path,
        )
        publish_prepared(data)
        return data
