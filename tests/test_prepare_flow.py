"""The prepare flow on a real Prefect server: end to end, cache hits and misses, retries."""

from __future__ import annotations

import functools
import http.server
import shutil
import socket
import struct
import threading
from pathlib import Path

import distributed
import pyarrow.parquet as pq
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from rnnlib.common import fingerprint
from rnnlib.config import InputSpec, PrepareConfig, SourceConfig
from rnnlib.errors import InputError, is_transient
from rnnlib.prepare.pipeline import prepare
from rnnlib_flows.prepare import prepare_flow
from rnnlib_tasks import dask_clients

pytestmark = pytest.mark.usefixtures("prefect_server")
STAGES = ["ingest", "preprocess", "split", "vocab", "tensorize"]


def names_config(datasets, work_dir, **overrides) -> PrepareConfig:
    data = {
        "source": {"dataset": "names", "mirror": str(datasets)},
        "work_dir": str(work_dir),
        "dask": {"n_workers": 2},
    }
    for section, values in overrides.items():
        data[section] = {**data.get(section, {}), **values}
    return PrepareConfig.model_validate(data)


def cached(data) -> dict[str, bool]:
    return {stage.stage: stage.cached for stage in data.stages}


def test_prepare_names_end_to_end_then_cached(datasets, tmp_path):
    config = names_config(datasets, tmp_path)
    first = prepare_flow(config)
    assert cached(first) == dict.fromkeys(STAGES, False)
    assert first.rows == 20074 and first.kept == 20074
    assert first.splits == {"train": 14052, "val": 3014, "test": 3008}
    assert sum(first.splits.values()) + sum(first.rejected.values()) == first.rows
    train = pq.read_table(f"{first.tensorize.path}/train")
    assert train.num_rows == 14052 and train.schema.field("ids").type.value_type.bit_width == 32

    second = prepare_flow(config)
    assert cached(second) == dict.fromkeys(STAGES, True)
    assert second.tensorize.path == first.tensorize.path

    # one downstream parameter: only its stage re-runs
    third = prepare_flow(names_config(datasets, tmp_path, tensorize={"max_length": 8}))
    assert cached(third) == {**dict.fromkeys(STAGES, True), "tensorize": False}
    # a preprocessing parameter: everything from preprocess on re-runs
    fourth = prepare_flow(names_config(datasets, tmp_path, preprocess={"lowercase": True}))
    assert cached(fourth) == {"ingest": True, **dict.fromkeys(STAGES[1:], False)}
    assert fourth.vocab_size < first.vocab_size
    # each configuration has its own outputs: the first run's are still there, whole
    assert len({first.tensorize.path, third.tensorize.path, fourth.tensorize.path}) == 3
    assert pq.read_table(f"{first.tensorize.path}/train").num_rows == 14052


def test_code_change_invalidates_and_deleted_output_is_rebuilt(datasets, tmp_path, monkeypatch):
    fingerprint.code_version.cache_clear()  # the source as it is on disk now
    config = names_config(datasets, tmp_path)
    first = prepare_flow(config)
    shutil.rmtree(first.tensorize.path)
    again = prepare_flow(config)
    assert again.tensorize.cached is False
    assert pq.read_table(f"{again.tensorize.path}/val").num_rows == 3014
    # the library's source, edited: a copy of the package, one of its modules changed
    copy = tmp_path / "rnnlib-copy"
    shutil.copytree(fingerprint.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "PACKAGE_DIR", copy)
    fingerprint.code_version.cache_clear()
    assert cached(prepare_flow(config)) == dict.fromkeys(STAGES, True)  # same code, same keys
    with open(copy / "prepare" / "text.py", "a") as fh:  # tokenisation: preprocess and what follows
        fh.write("# an edit\n")
    fingerprint.code_version.cache_clear()
    try:
        changed = prepare_flow(config)
    finally:
        fingerprint.code_version.cache_clear()
    assert cached(changed) == {"ingest": True, **dict.fromkeys(STAGES[1:], False)}


def test_an_edit_re_runs_only_the_stages_whose_code_it_changes(datasets, tmp_path, monkeypatch):
    """The code digest of a stage is the source it can run, found from its imports: editing the
    model re-runs training and evaluation, not the data stages; editing evaluation re-runs
    evaluation only."""
    from rnnlib.config import ModelConfig, PreprocessConfig, TrainConfig
    from rnnlib.modeling.pipeline import evaluate_stage, fit_stage

    copy = tmp_path / "rnnlib-copy"
    shutil.copytree(fingerprint.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "PACKAGE_DIR", copy)
    work, model, cfg = str(tmp_path / "w"), ModelConfig(embedding_dim=8, hidden_size=8), TrainConfig(epochs=1)

    def keys() -> dict[str, str]:
        fingerprint.code_version.cache_clear()
        fingerprint.code_closure.cache_clear()
        data = prepare(
            PrepareConfig.model_validate(
                {
                    "source": {"dataset": "names", "mirror": str(datasets)},
                    "work_dir": work,
                    "tensorize": {"shard_rows": 2000},
                }
            )
        )
        fitted = fit_stage(data.tensorize, model=model, cfg=cfg, work_dir=work)
        evaluated = evaluate_stage(
            data,
            [fitted],
            None,
            preprocess=PreprocessConfig(level="char"),
            model=model,
            max_length=None,
            work_dir=work,
            graph_engines=False,
        )
        return {s.stage: s.key for s in [*data.stages, fitted, evaluated]}

    try:
        before = keys()
        (copy / "modeling" / "model.py").write_text((copy / "modeling" / "model.py").read_text() + "# edit\n")
        after_model = keys()
        (copy / "modeling" / "evaluate.py").write_text((copy / "modeling" / "evaluate.py").read_text() + "# edit\n")
        after_evaluate = keys()
    finally:
        fingerprint.code_version.cache_clear()
        fingerprint.code_closure.cache_clear()
    changed = lambda a, b: sorted(s for s in a if a[s] != b[s])  # noqa: E731
    assert changed(before, after_model) == ["evaluate", "fit"]
    assert changed(after_model, after_evaluate) == ["evaluate"]


def test_input_content_change_invalidates_ingest(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("text,label\n" + "".join(f"doc number {i},{i % 2}\n" for i in range(40)))
    config = PrepareConfig(
        source=SourceConfig(inputs=[InputSpec(path=str(data))]),
        work_dir=str(tmp_path / "w"),
        dask={"n_workers": 1, "processes": False},
        preprocess={"level": "word"},
    )
    assert prepare_flow(config).rows == 40
    assert cached(prepare_flow(config))["ingest"] is True
    data.write_text(data.read_text() + "one more,1\n")
    changed = prepare_flow(config)
    assert cached(changed)["ingest"] is False and changed.rows == 41


def _task_runs(flow_run_id):
    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def test_bad_input_fails_at_once_without_retries(tmp_path):
    (tmp_path / "bad.csv").write_text("body,label\nx,1\n")
    config = PrepareConfig(
        source=SourceConfig(inputs=[InputSpec(path=str(tmp_path / "bad.csv"))]), work_dir=str(tmp_path / "w")
    )
    state = prepare_flow(config, return_state=True)
    assert state.is_failed()
    with pytest.raises(InputError, match=r"bad\.csv: unknown column 'text'"):
        state.result()
    ingest_runs = [r for r in _task_runs(state.state_details.flow_run_id) if r.name.startswith("ingest")]
    assert len(ingest_runs) == 1 and ingest_runs[0].run_count == 1


class FlakyServer(http.server.ThreadingHTTPServer):
    """Serves a folder, but resets (TCP RST) its first `failures` connections."""

    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root)))
        self.failures = failures

    def process_request(self, request, client_address):
        if self.failures > 0:
            self.failures -= 1
            request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.close()
            return
        super().process_request(request, client_address)


def test_a_real_stage_retries_a_dropped_connection(tmp_path):
    """The ingest task reading an http:// input whose server drops its first connections fails,
    is retried, and succeeds. An attempt usually opens four connections before it gives up
    (fsspec tries HEAD, then GET; aiohttp retries each once on a reset connection), so the third
    run usually succeeds; on a loaded machine an attempt can give up after fewer, so one more
    run is allowed."""
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "data.csv").write_text("text,label\n" + "".join(f"doc {i},{i % 2}\n" for i in range(20)))
    server = FlakyServer(tmp_path / "www", failures=8)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/data.csv"
        config = PrepareConfig(
            source=SourceConfig(inputs=[InputSpec(path=url)]),
            work_dir=str(tmp_path / "w"),
            preprocess={"level": "word"},
            dask={"n_workers": 1, "processes": False},
        )
        state = prepare_flow(config, return_state=True)
    finally:
        server.shutdown()
    assert state.is_completed() and state.result().rows == 20
    ingest_runs = [r for r in _task_runs(state.state_details.flow_run_id) if r.name.startswith("ingest")]
    assert len(ingest_runs) == 1 and ingest_runs[0].run_count in (3, 4)  # 8 dropped connections


def test_transient_classification():
    assert is_transient(TimeoutError()) and is_transient(ConnectionError()) and is_transient(OSError(5, "EIO"))
    dropped = FileNotFoundError("http://host/x.csv")  # how fsspec reports a dropped connection
    dropped.__cause__ = ConnectionResetError()
    assert is_transient(dropped)
    assert not is_transient(FileNotFoundError()) and not is_transient(InputError("bad"))
    assert not is_transient(ValueError("bug")) and not is_transient(KeyError("bug"))


@pytest.mark.slow
def test_prepare_imdb_folders_and_unlabelled_dump(datasets, tmp_path):
    imdb = prepare_flow(
        PrepareConfig.model_validate(
            {
                "source": {"dataset": "imdb", "mirror": str(datasets)},
                "work_dir": str(tmp_path),
                "preprocess": {"level": "word", "lowercase": True, "strip_html": True, "punctuation": "remove"},
                "tensorize": {"max_length": 400},
            }
        )
    )
    assert imdb.rows == 50000 and imdb.splits["test"] == 25000
    assert imdb.splits["train"] + imdb.splits["val"] == 25000
    dump = prepare_flow(
        PrepareConfig.model_validate(
            {
                "source": {
                    "inputs": [
                        {"path": str(datasets / "imdb" / "unsup.jsonl.gz"), "label_column": None, "id_column": "id"}
                    ]
                },
                "work_dir": str(tmp_path),
                "preprocess": {"level": "word", "lowercase": True},
            }
        )
    )
    assert dump.rows == 50000 and dump.splits == {"all": 50000} and dump.labels == []
    ids = pq.read_table(f"{dump.tensorize.path}/all", columns=["id", "label"]).to_pandas()
    assert ids["id"].str.startswith("unsup/").all() and ids["label"].isna().all()


def test_a_run_served_from_cache_starts_no_cluster(datasets, tmp_path, monkeypatch):
    config = names_config(datasets, tmp_path)
    prepare_flow(config)

    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was started for a run served from cache")

    monkeypatch.setattr(dask_clients, "dask_client", no_cluster)
    assert cached(prepare_flow(config)) == dict.fromkeys(STAGES, True)


def test_stages_run_on_an_existing_cluster_given_its_address(datasets, tmp_path, monkeypatch, client):
    """dask.address (--dask-address, RNNLIB_DASK_ADDRESS): the work goes to that scheduler's
    workers, and no LocalCluster is started."""

    def no_local_cluster(*args, **kwargs):
        raise AssertionError("a LocalCluster was started although an address was given")

    monkeypatch.setattr(distributed, "LocalCluster", no_local_cluster)
    before = sum(client.run(lambda dask_worker: len(dask_worker.data) + len(dask_worker.state.log)).values())
    config = names_config(datasets, tmp_path, dask={"address": client.scheduler.address, "n_workers": None})
    data = prepare_flow(config)
    assert data.rows == 20074 and not any(cached(data).values())
    after = sum(client.run(lambda dask_worker: len(dask_worker.data) + len(dask_worker.state.log)).values())
    assert after > before  # the existing workers did the stages' work


def test_a_local_cluster_listens_on_this_machine_only(client):
    """The scheduler, the workers and the dashboard of a run's own LocalCluster are on 127.0.0.1."""
    info = client.scheduler_info()
    assert client.scheduler.address.startswith("tcp://127.0.0.1:")
    assert all(address.startswith("tcp://127.0.0.1:") for address in info["workers"])
    dashboard = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.http_server.address)
    assert dashboard in ("127.0.0.1", "localhost"), dashboard


def test_keys_follow_the_libraries_and_the_stop_words_the_code_uses(tmp_path, monkeypatch):
    """An upgrade of a library a stage imports, or another stop-word list, rebuilds what it can
    change: neither is in rnnlib's source, so neither was in the key."""
    import pyarrow as pa

    from rnnlib.common import fingerprint
    from rnnlib.config import PrepareConfig
    from rnnlib.prepare import pipeline, text

    versions = fingerprint.library_versions({fingerprint.module_file("rnnlib.prepare.text")})
    assert {"pyarrow", "nltk"} <= set(versions) and "rnnlib" not in versions
    (tmp_path / "d.csv").write_text("text,label\nthe cat sat,a\na dog ran,b\n" * 5)
    config = PrepareConfig.model_validate(
        {
            "source": {"inputs": [{"path": str(tmp_path / "d.csv")}]},
            "preprocess": {"level": "word", "stopwords": True},
            "work_dir": str(tmp_path / "w"),
        }
    )
    first = pipeline.prepare(config)
    monkeypatch.setattr(text, "stopword_set", lambda language: pa.array(["the"]))
    fewer_stop_words = pipeline.prepare(config)
    assert fewer_stop_words.preprocess.key != first.preprocess.key and fewer_stop_words.ingest.cached
    monkeypatch.setattr(fingerprint, "library_versions", lambda files: {**versions, "pyarrow": "0.0.1"})
    fingerprint.code_version.cache_clear()
    try:
        upgraded = pipeline.prepare(config)
    finally:
        fingerprint.code_version.cache_clear()
    assert not upgraded.ingest.cached and upgraded.ingest.key != first.ingest.key
