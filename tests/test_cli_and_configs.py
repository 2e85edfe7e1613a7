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

from rnnlib.config import (
    PrepareConfig,
    ScoreConfig,
    TrainFlowConfig,
    field_docs,
    load_config,
)
from rnnlib_flows.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("recipe", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_recipes_are_valid_configs(recipe):
    """Every value a recipe sets is the value the run gets (nothing silently dropped)."""
    written = yaml.safe_load(recipe.read_text())
    resolved = load_config(TrainFlowConfig, recipe).model_dump(mode="json")

    def check(node, got, where):
        for key, value in node.items():
            if isinstance(value, dict):
                check(value, got[key], f"{where}{key}.")
            elif key in ("inputs", "unlabelled"):  # lists of InputSpec: the keys written
                assert [{k: i[k] for k in spec} for spec, i in zip(value, got[key])] == value, where + key
            else:
                assert got[key] == value, where + key

    check(written, resolved, "")


def test_one_key_set_in_every_layer_takes_the_last(capsys, tmp_path):
    """defaults < --config file < shortcut flags < --set, for the same keys."""
    (tmp_path / "run.yaml").write_text("work_dir: from-file\nsource: {mirror: from-file}\nsplit: {seed: 5}\n")
    assert (
        main(
            [
                "prepare",
                "--config",
                str(tmp_path / "run.yaml"),
                "--work-dir",
                "from-flag",
                "--mirror",
                "from-flag",
                "--set",
                "work_dir=from-set",
                "--print-config",
            ]
        )
        == 0
    )
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["work_dir"] == "from-set"  # file < flag < --set
    assert resolved["source"]["mirror"] == "from-flag"  # file < flag
    assert resolved["split"]["seed"] == 5 and resolved["split"]["train"] == 0.7  # file < nothing; default


def test_dask_address_from_the_flag_or_the_environment(capsys, monkeypatch):
    monkeypatch.setenv("RNNLIB_DASK_ADDRESS", "tcp://from-env:8786")
    assert main(["prepare", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["dask"]["address"] == "tcp://from-env:8786"
    assert main(["score", "b", "in.txt", "-o", "out", "--dask-address", "tcp://flag:8786", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["dask"]["address"] == "tcp://flag:8786"


def test_config_file_then_shortcuts_then_overrides(capsys, tmp_path):
    rc = main(
        [
            "prepare",
            "--config",
            str(REPO / "configs" / "imdb.yaml"),
            "--mirror",
            "/data/mirror",
            "--set",
            "split.seed=3",
            "--set",
            "preprocess.placeholders=[url]",
            "--print-config",
        ]
    )
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


def test_unreadable_yaml_is_one_line_naming_the_file_or_override(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("preprocess:\n  level: [word\n")
    assert main(["prepare", "--config", str(bad), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rnnlib: error: {bad}: not valid YAML (line 3") and err.count("\n") == 1
    assert main(["prepare", "--set", "split.train={0.9", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "override 'split.train={0.9': not valid YAML" in err and err.count("\n") == 1
    assert main(["prepare", "--set", "vocab.min_freq=many", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnlib: error: vocab.min_freq: Input should be a valid integer") and err.count("\n") == 1


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
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
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
            [
                sys.executable,
                "-m",
                "rnnlib_flows.cli",
                "prepare",
                "--mirror",
                str(datasets),
                "--work-dir",
                str(tmp_path / "work"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert "rows 20074: kept 20074" in run.stdout and "tensor shards:" in run.stdout
        request = urllib.request.Request(
            f"{api}/flow_runs/filter", data=b"{}", method="POST", headers={"Content-Type": "application/json"}
        )
        runs = json.load(urllib.request.urlopen(request, timeout=10))
        assert [(r["name"] != "", r["state_type"]) for r in runs] == [(True, "COMPLETED")]

        again = subprocess.run(run.args, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert again.returncode == 0 and "every stage is reused" in again.stdout, again.stderr[-3000:]
        assert "rows 20074: kept 20074" in again.stdout
        assert len(json.load(urllib.request.urlopen(request, timeout=10))) == 1  # no flow run needed
        forced = subprocess.run([*run.args, "--flow"], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert forced.returncode == 0 and "every stage is reused" not in forced.stdout
        runs = json.load(urllib.request.urlopen(request, timeout=10))
        assert [r["state_type"] for r in runs] == ["COMPLETED", "COMPLETED"]
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize("command,config_class", [("train", TrainFlowConfig), ("score", ScoreConfig)])
def test_help_documents_every_setting(capsys, command, config_class):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    shown = capsys.readouterr().out
    docs = field_docs(config_class)
    assert len(docs) > 20
    for key, description, _ in docs:
        assert f"  {key} " in shown, key
        assert description, f"{key} has no description"


def test_a_missing_nltk_corpus_is_a_config_error_saying_how_to_install_it(tmp_path):
    """A config error (one line from the CLI, no retry), not a bare RuntimeError."""
    env = {**os.environ, "NLTK_DATA": str(tmp_path / "no-nltk-data"), "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", "from rnnlib.prepare.text import stopword_set; stopword_set('english')"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert (
        "rnnlib.config.ConfigError: NLTK's stop-word corpus for 'english' is not installed: run "
        "`python -m nltk.downloader stopwords`" in done.stderr
    )


@pytest.mark.slow
def test_a_killed_command_leaves_no_process_behind(datasets, tmp_path):
    """SIGKILL gives a command no chance to stop its temporary Prefect server or its Dask
    processes; its watchdog stops them."""
    import psutil

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    command = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rnnlib_flows.cli",
            "prepare",
            "--mirror",
            str(datasets),
            "--work-dir",
            str(tmp_path / "work"),
            "--set",
            "preprocess.level=word",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    parent = psutil.Process(command.pid)
    deadline = time.time() + 240
    started: dict[int, psutil.Process] = {}
    server_seen = False
    while time.time() < deadline and command.poll() is None:
        for child in parent.children(recursive=True):
            started.setdefault(child.pid, child)
            try:
                server_seen |= "prefect.server.api.server" in " ".join(child.cmdline())
            except psutil.Error:
                pass
        if server_seen and len(started) >= 3:  # the watchdog, the server, and more
            break
        time.sleep(0.2)
    assert server_seen and command.poll() is None, "the command ended before its server was seen"
    command.kill()
    command.wait()
    gone, alive = psutil.wait_procs(list(started.values()), timeout=30)
    assert alive == [], [p.cmdline() for p in alive if p.is_running()]


def test_the_watchdog_stops_a_process_it_never_saw_in_the_tree():
    """A process started just before the command dies, in a session of its own (as pools and
    resource trackers detach themselves), is found by the token it inherited and stopped."""
    import psutil

    script = (
        "import subprocess, sys, time\n"
        "from rnnlib_flows.reaper import start_reaper\n"
        "start_reaper(poll_seconds=3600)\n"  # it never gets to poll the tree
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    command = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO)
    detached = psutil.Process(int(command.stdout.readline()))
    command.kill()
    command.wait()

    def stopped() -> bool:
        try:
            return detached.status() == psutil.STATUS_ZOMBIE  # ended; its new parent may not reap it
        except psutil.NoSuchProcess:
            return True

    deadline = time.monotonic() + 30
    while not stopped() and time.monotonic() < deadline:
        time.sleep(0.2)
    if not stopped():
        detached.kill()
        pytest.fail("the detached process outlived the command")
