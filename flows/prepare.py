"""The `prepare` flow: ingest -> preprocess -> split -> vocab -> tensorize, each stage a task
cached by content (see rnnlib.stages); the order is the library's (`rnnlib.prepare.pipeline`)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from rnnlib.config import PrepareConfig
from rnnlib.prepare.pipeline import PreparedData, prepare
from rnnlib.stages import holding_outputs
from rnnlib_flows.reports import publish_prepared
from rnnlib_tasks.dask_clients import close_clients, connector
from rnnlib_tasks.prepare import PREPARE_TASKS


def prepare_as_tasks(config: PrepareConfig) -> PreparedData:
    """The prepare stages as Prefect tasks (the train and tune flows run them too). The Dask
    cluster a stage starts when it has work to do is shut down once they are done, whatever
    happens."""
    try:
        return prepare(config, connect=connector(config.dask), runner=PREPARE_TASKS)
    finally:
        close_clients()


@flow(name="prepare")
def prepare_flow(config: PrepareConfig = PrepareConfig()) -> PreparedData:
    """Turn labelled text into tensor shards; returns where everything is and what was kept."""
    with holding_outputs():  # until the run ends, `prune` leaves what it made or reused
        data = prepare_as_tasks(config)
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
