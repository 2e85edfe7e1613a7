"""Shared fixtures: real datasets from ../shared, one real Dask LocalCluster and one Prefect
test server per session (a fresh Prefect database takes ~20 s to create)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("RNNLIB_TEST_DATASETS", REPO.parent / "shared" / "datasets"))
_HOME = tempfile.mkdtemp(prefix="rnnlib-tests-")
os.environ.setdefault("NLTK_DATA", str(REPO.parent / "shared" / "nltk_data"))
os.environ["PREFECT_HOME"] = str(Path(_HOME) / "prefect")
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["RNNLIB_CACHE_DIR"] = str(Path(_HOME) / "downloads")
os.environ["RNNLIB_ENGINE_CACHE"] = str(Path(_HOME) / "engines")
os.environ.pop("RNNLIB_DATASETS_MIRROR", None)

import pytest  # noqa: E402

from rnnlib.common.cluster import dask_client  # noqa: E402
from rnnlib.config import DaskConfig, ModelConfig  # noqa: E402


@pytest.fixture(scope="session")
def run_without():
    """Runs Python code in a fresh interpreter in which `module` cannot be imported (an extra
    not installed, or a library a process must not need); returns the last line it printed."""

    def run(module: str, code: str) -> str:
        script = f"import sys; sys.modules[{module!r}] = None  # importing it raises ImportError\n{code}"
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip().splitlines()[-1]

    return run


@pytest.fixture(scope="session")
def small_model() -> ModelConfig:
    """A model that learns the surnames in an epoch or two (one direction, its last state, no
    dropout), named in full so that tests of training do not move with the defaults."""
    return ModelConfig(
        cell="gru",
        embedding_dim=16,
        hidden_size=32,
        bidirectional=False,
        pooling="last",
        dropout=0.0,
        embedding_dropout=0.0,
    )


@pytest.fixture(scope="session")
def datasets() -> Path:
    if not (DATASETS / "names").is_dir():
        pytest.fail(f"the shared datasets are missing at {DATASETS} (set RNNLIB_TEST_DATASETS)")
    return DATASETS


@pytest.fixture(scope="session")
def client():
    """A real LocalCluster with two worker processes."""
    with dask_client(DaskConfig(n_workers=2, processes=True)) as c:
        yield c


@pytest.fixture
def http_root(tmp_path):
    """A real local HTTP server over a temporary folder: (folder, base URL)."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def names_data(datasets, tmp_path_factory):
    """The surnames set prepared in process (no cluster), character level, in shards of 2,000
    rows (so distributed ranks have shards of their own)."""
    from rnnlib.config import PrepareConfig
    from rnnlib.prepare.pipeline import prepare

    return prepare(
        PrepareConfig.model_validate(
            {
                "source": {"dataset": "names", "mirror": str(datasets)},
                "work_dir": str(tmp_path_factory.mktemp("names")),
                "tensorize": {"shard_rows": 2000},
            }
        )
    )


@pytest.fixture(scope="session")
def names_tensors(names_data) -> Path:
    """The surnames' tensor shards (train/, val/, test/)."""
    return Path(names_data.tensorize.path)


@pytest.fixture(scope="session")
def names_bundle(names_data, tmp_path_factory) -> Path:
    """A small character-level GRU trained for one epoch on the surnames."""
    from rnnlib.config import ModelConfig, PreprocessConfig, TrainConfig
    from rnnlib.modeling.bundle import save_bundle
    from rnnlib.modeling.train import BEST, train

    work = tmp_path_factory.mktemp("names-bundle")
    model = ModelConfig(cell="gru", embedding_dim=16, hidden_size=32, bidirectional=True)
    train(names_data.tensorize.path, out_dir=work / "fit", model=model, cfg=TrainConfig(epochs=1, lr=3e-3))
    save_bundle(
        work / "bundle",
        work / "fit" / BEST,
        Path(names_data.vocab.path),
        PreprocessConfig(level="char"),
        model,
        None,
        {},
    )
    return work / "bundle"
