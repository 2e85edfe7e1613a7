"""The flows on an existing Dask cluster: real `dask scheduler` and `dask worker` processes on
127.0.0.1, reached by address as `--dask-address` does; no LocalCluster is started."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import distributed
import pytest

from rnnlib.config import InputSpec, PrepareConfig, ScoreConfig

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
DASK = str(Path(sys.executable).with_name("dask"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def scheduler_address():
    address = f"tcp://127.0.0.1:{_free_port()}"
    local = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]
    processes = [
        subprocess.Popen(
            [DASK, "scheduler", "--port", address.rsplit(":", 1)[1], *local],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    processes += [
        subprocess.Popen(
            [DASK, "worker", address, "--nthreads", "1", *local], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for _ in range(2)
    ]
    try:
        deadline = time.time() + 120
        while True:
            try:
                with distributed.Client(address, timeout=5) as client:
                    if len(client.scheduler_info()["workers"]) == 2:
                        break
            except OSError:
                pass
            assert time.time() < deadline, "the Dask cluster did not start"
            time.sleep(1)
        yield address
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)


def _work_done(address: str) -> int:
    with distributed.Client(address) as client:
        return sum(client.run(lambda dask_worker: len(dask_worker.state.log)).values())


def test_prepare_and_score_on_an_existing_cluster(scheduler_address, datasets, names_bundle, tmp_path, monkeypatch):
    from rnnlib_flows.prepare import prepare_flow
    from rnnlib_flows.score import score_flow

    def no_local_cluster(*args, **kwargs):
        raise AssertionError("a LocalCluster was started although an address was given")

    monkeypatch.setattr(distributed, "LocalCluster", no_local_cluster)
    before = _work_done(scheduler_address)
    data = prepare_flow(
        PrepareConfig.model_validate(
            {
                "source": {"dataset": "names", "mirror": str(datasets)},
                "work_dir": str(tmp_path / "work"),
                "dask": {"address": scheduler_address},
            }
        )
    )
    assert data.rows == data.kept == 20074
    middle = _work_done(scheduler_address)
    assert middle > before  # the cluster's workers did the stages' work

    (tmp_path / "new.txt").write_text("".join(f"Surname{i}\n" for i in range(300)))
    report = score_flow(
        ScoreConfig(
            bundle=str(names_bundle),
            inputs=[InputSpec(path=str(tmp_path / "new.txt"))],
            output=str(tmp_path / "scored"),
            partition_rows=100,
            dask={"address": scheduler_address},
        )
    )
    assert report.complete and report.scored == 300
    assert _work_done(scheduler_address) > middle
