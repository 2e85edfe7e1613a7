"""Shared fixtures: real datasets from ../shared, one real Dask LocalCluster and one Prefect
test server per session (a fresh Prefect database takes ~20 s to create)."""

from __future__ import annotations

import os
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
os.environ.pop("RNNLIB_DATASETS_MIRROR", None)

import pytest  # noqa: E402

from rnnlib.cluster import dask_client  # noqa: E402
from rnnlib.config import DaskConfig  # noqa: E402


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


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield

