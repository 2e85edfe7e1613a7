"""The `rnnlib` command line, the shipped recipe files, and a run against a real Prefect server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from rnnlib_flows.cli import main

from rnnlib.config import PrepareConfig, TrainFlowConfig, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("recipe", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_recipes_are_valid_configs(recipe):
    assert isinstance(load_config(TrainFlowConfig, recipe), TrainFlowConfig)


def test_config_file_then_shortcuts_then_overrides(capsys, tmp_path):
    rc = main(["prepare", "--config", str(REPO / "configs" / "imdb.yaml"), "--mirror", "/data/mirror",
               "--set", "split.seed=3", "--set", "preprocess.placeholders=[url]", "--print-config"])
    assert rc == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["source"]["dataset"] == "imdb" and resolved["source"]["mirror"] == "/data/mirror"
    assert resolved["split"]["seed"] == 3 and resolved["preprocess"]["placeholders"] == ["url"]
    assert resolved["tensorize"]["max_length"] == 1000  # from the file
    # the printed config is itself a valid config file
    (tmp_path / "again.yaml").write_text(yaml.safe_dump(resolved))
    assert load_config(PrepareConfig, tmp_path / "again.yaml").model_dump(mode="json") == resolved


def test_bad_config_is_a_clear_error(capsys):
    assert main(["prepare", "--set", "split.train=0.9", "--print-config"]) == 2
    assert "split fractions train + val + test must sum to 1" in capsys.readouterr().err
    assert main(["prepare", "--set", "preprocess.levle=word", "--print-config"]) == 2
    assert "levle" in capsys.readouterr().err


@pytest.mark.usefixtures("prefect_server")
def test_bad_input_exits_with_the_file_and_reason(capsys, tmp_path):
    inputs = json.dumps([{"path": str(tmp_path / "missing.csv")}])
    assert main(["prepare", "--work-dir", str(tmp_path), "--set", f"source.inputs={inputs}"]) == 2
    assert "missing.csv: file not found" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_cli_runs_against_a_real_prefect_server(datasets, tmp_path):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(f"{api}/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "prefect server did not start"
                time.sleep(1)
        run = subprocess.run(
            [sys.executable, "-m", "rnnlib_flows.cli", "prepare", "--mirror", str(datasets),
             "--work-dir", str(tmp_path / "work")],
            env=env, capture_output=True, text=True, timeout=300, cwd=REPO,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert "rows 20074: kept 20074" in run.stdout and "tensor shards:" in run.stdout
        request = urllib.request.Request(f"{api}/flow_runs/filter", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})
        runs = json.load(urllib.request.urlopen(request, timeout=10))
        assert [(r["name"] != "", r["state_type"]) for r in runs] == [(True, "COMPLETED")]
    finally:
        server.terminate()
        server.wait(timeout=30)
