"""The layout's rules, checked: the library never imports orchestration, the pipeline's parts
import only the parts before them, and the Prefect side installs under names that cannot clash
with another project's `flows` or `tasks`."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    """The contracts in pyproject.toml ([tool.importlinter]), run by import-linter."""
    run = subprocess.run(
        [shutil.which("lint-imports") or "lint-imports", "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "3 kept, 0 broken" in run.stdout


def test_prefect_side_is_installed_under_its_own_names():
    for name, folder in (("rnnlib_flows", "flows"), ("rnnlib_tasks", "tasks"), ("rnnlib_deployments", "deployments")):
        spec = importlib.util.find_spec(name)
        assert spec is not None and Path(spec.origin).parent == REPO / folder


def test_the_public_surface_is_importable_from_the_top_without_loading_torch():
    import subprocess
    import sys

    script = (
        "import sys, rnnlib; assert 'torch' not in sys.modules; "
        "from rnnlib import (Predictor, prepare_data, train_model, tune, score, load_config, TrainFlowConfig, "
        "ScoreConfig, InputSpec, InputError); import rnnlib.prepare.pipeline as p; "
        "assert prepare_data is p.prepare and callable(train_model) and Predictor.__name__ == 'Predictor'; "
        "assert sorted(rnnlib.__all__) == rnnlib.__all__ and all(getattr(rnnlib, n) for n in rnnlib.__all__)"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
