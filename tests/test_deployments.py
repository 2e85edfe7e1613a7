"""Deployments on a real Prefect server: a process work pool and worker, the scheduled
retraining deployment run to completion, and a scoring run triggered by the file watcher's event.
Every process the test starts is stopped at the end."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from rnnlib.scoring.output import MANIFEST, output_dir_for

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))
POOL = "rnnlib-test-pool"
SCORING = "score-new-files/on-arrival"
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(condition, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Processes:
    """Starts processes in their own sessions and stops them all (and their children)."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs, self.started = env, logs, []

    def start(self, name: str, *command: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        process = subprocess.Popen(
            command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.started.append(process)
        return process

    def run(self, *command: str) -> str:
        done = subprocess.run(command, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        return done.stdout

    def stop(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(self.started):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


AUTH = "rnnlib:correct-horse-battery"


@pytest.fixture
def server(tmp_path, datasets) -> Iterator[tuple[Processes, str]]:
    yield from _server(tmp_path, datasets, {})


@pytest.fixture
def authenticated_server(tmp_path, datasets) -> Iterator[tuple[Processes, str]]:
    """A server that requires the auth string; every process the test starts presents it."""
    yield from _server(tmp_path, datasets, {"PREFECT_SERVER_API_AUTH_STRING": AUTH, "PREFECT_API_AUTH_STRING": AUTH})


def _server(tmp_path: Path, datasets: Path, extra: dict[str, str]) -> Iterator[tuple[Processes, str]]:
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "RNNLIB_DATASETS_MIRROR": str(datasets),
        "NLTK_DATA": os.environ.get("NLTK_DATA", ""),
        **extra,
    }
    env.pop("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", None)
    (tmp_path / "logs").mkdir()
    processes = Processes(env, tmp_path / "logs")
    try:
        processes.start("server", PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port))

        def healthy() -> bool:
            try:
                return urllib.request.urlopen(f"{api}/health", timeout=2).status == 200
            except OSError:
                return False

        _wait(healthy, 240, "the Prefect server")
        yield processes, api
    finally:
        processes.stop()
        for log in sorted((tmp_path / "logs").glob("*.log")):  # shown when the test fails
            print(f"----- {log.name}\n{log.read_text()[-3000:]}")


@pytest.fixture
def postgres() -> Iterator[str]:
    """A real PostgreSQL server (the system's: Debian's `postgresql`, which `.ci/run` installs where
    it is missing) in a fresh cluster on a free port; yields the SQLAlchemy URL Prefect takes."""
    binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    assert binaries, "PostgreSQL is not installed: `apt-get install postgresql` (as .ci/run does)"
    bin_dir = binaries[-1]
    root = Path(tempfile.mkdtemp(prefix="rnnlib-postgres-"))  # the server's own user must reach it
    as_server_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # it refuses root
    if as_server_user:
        shutil.chown(root, "postgres")
    port = _free_port()
    server = None
    try:
        subprocess.run(
            [*as_server_user, str(bin_dir / "initdb"), "-D", str(root / "db"), "-U", "prefect", "--auth=trust"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        log = open(root / "server.log", "w")
        server = subprocess.Popen(
            [
                *as_server_user,
                str(bin_dir / "postgres"),
                "-D",
                str(root / "db"),
                "-p",
                str(port),
                "-h",
                "127.0.0.1",
                "-k",
                str(root),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _wait(
            lambda: (
                subprocess.run(
                    [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", "prefect"],
                    capture_output=True,
                ).returncode
                == 0
            ),
            60,
            "PostgreSQL",
        )
        yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/postgres"
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
            print(f"----- postgres\n{(root / 'server.log').read_text()[-2000:]}")
        shutil.rmtree(root, ignore_errors=True)


def _flow_runs(api: str, deployment: str, auth: str | None = None) -> list[dict]:
    """Flow runs of a deployment (`flow/deployment`), through the REST API."""

    def post(path: str, body: dict) -> object:
        return _post(api, path, body, auth)

    flow_name, name = deployment.split("/")
    try:
        return _query(post, flow_name, name)
    except OSError:  # a server busy creating many runs at once may answer late: ask again later
        return []


def _post(api: str, path: str, body: dict, auth: str | None = None) -> object:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    request = urllib.request.Request(f"{api}{path}", data=json.dumps(body).encode(), headers=headers)
    return json.loads(urllib.request.urlopen(request, timeout=10).read())


def _query(post, flow_name: str, name: str) -> list[dict]:
    found = post(
        "/deployments/filter", {"deployments": {"name": {"any_": [name]}}, "flows": {"name": {"any_": [flow_name]}}}
    )
    if not found:
        return []
    return post("/flow_runs/filter", {"flow_runs": {"deployment_id": {"any_": [found[0]["id"]]}}})


def _completed(runs: list[dict], n: int) -> list[dict] | None:
    """The completed runs, once there are `n` of them."""
    done = [r for r in runs if r["state"]["type"] == "COMPLETED"]
    return done if len(done) >= n else None


def _scored_paths(runs: list[dict]) -> list[str]:
    """The files the scoring runs were given, one entry per file per run."""
    return [file["path"] for run in runs for file in run["parameters"]["files"]]


def _files_done(runs: list[dict], n: int) -> list[dict] | None:
    """The completed scoring runs, once they have scored `n` files between them."""
    done = [r for r in runs if r["state"]["type"] == "COMPLETED"]
    return done if len(_scored_paths(done)) >= n else None


def _output(path: Path, scored: Path) -> Path:
    """The output folder of the scoring run for the file as it is now."""
    st = path.stat()
    return output_dir_for(str(path), scored, f"{st.st_size}:{st.st_mtime_ns}")


def _final(runs: list[dict]) -> dict | None:
    """The run that has ended (runs still scheduled for the nights ahead are ignored)."""
    done = [r for r in runs if r["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")]
    return done[0] if done else None


def _drop_burst(
    processes: Processes, api: str, drop: Path, scored: Path, worker: subprocess.Popen, done_before: int
) -> float:
    """50 files dropped at once into the watched folder: announced in events of at most 10 (the
    watcher's --batch), so a few runs, never more than 2 at a time; each file scored once, every
    row once. Returns the seconds from the first run's start to the last one's end."""
    import psutil

    burst = {f"drop-{i:02d}.txt": [f"Name{i}x{j}" for j in range(i % 5 + 1)] for i in range(50)}
    for name, rows in burst.items():
        (drop / name).write_text("".join(f"{row}\n" for row in rows))
    runs = _wait(
        lambda: _files_done(_flow_runs(api, SCORING), done_before + len(burst)), 900, "every dropped file scored"
    )
    burst_runs = [r for r in runs if any(Path(p).name in burst for p in _scored_paths([r]))]
    paths = [p for p in _scored_paths(burst_runs) if Path(p).name in burst]
    assert sorted(paths) == sorted(str(drop / name) for name in burst)  # each file once
    assert all(len(r["parameters"]["files"]) <= 10 for r in runs)
    for name, rows in burst.items():
        manifest = json.loads((_output(drop / name, scored) / MANIFEST).read_text())
        assert manifest["complete"] and manifest["rows"] == manifest["scored"] == len(rows)
    spans = {r["id"]: (datetime.fromisoformat(r["start_time"]), datetime.fromisoformat(r["end_time"])) for r in runs}
    most = max(sum(start <= moment < end for start, end in spans.values()) for moment, _ in spans.values())
    drained = max(spans[r["id"]][1] for r in burst_runs) - min(spans[r["id"]][0] for r in burst_runs)
    print(
        f"{len(burst)} files, {sum(map(len, burst.values()))} rows: {len(burst_runs)} runs, at most {most} "
        f"at a time, {drained.total_seconds():.0f} s from the first run's start to the last one's end"
    )
    assert most <= 2
    _wait(
        lambda: not psutil.Process(worker.pid).children(recursive=True),
        60,
        "the flow runs' processes (their Dask clusters included) to end",
    )
    return drained.total_seconds()


def test_retraining_on_schedule_and_scoring_on_file_arrival(server, tmp_path):
    processes, api = server
    registry, scored, drop = tmp_path / "models", tmp_path / "scored", tmp_path / "incoming"
    drop.mkdir()
    processes.run(PREFECT, "work-pool", "create", POOL, "--type", "process")
    out = processes.run(
        sys.executable,
        "-m",
        "rnnlib_deployments.deploy",
        "--pool",
        POOL,
        "--dataset",
        "names",
        "--config-file",
        "configs/german_italian.yaml",
        "--registry",
        str(registry),
        "--output-root",
        str(scored),
        "--set",
        "train.epochs=2",
        "--set",
        f"work_dir={tmp_path / 'work'}",
        "--set",
        "dask.processes=false",
        "--scoring-concurrency",
        "2",
    )
    assert "retrain/nightly" in out and "score-new-files/on-arrival" in out and "score/ad-hoc" in out
    retrain = json.loads(urllib.request.urlopen(f"{api}/deployments/name/retrain/nightly", timeout=10).read())
    print("retrain deployment:", {k: v for k, v in retrain.items() if "concurrency" in k or k == "schedules"})
    limit = retrain.get("global_concurrency_limit") or {}
    assert limit.get("limit") == 1 or retrain.get("concurrency_limit") == 1  # one retraining at a time
    assert [s["schedule"]["cron"] for s in retrain["schedules"]] == ["0 2 * * *"]
    scheduled = _wait(
        lambda: [r for r in _flow_runs(api, "retrain/nightly") if r["state"]["type"] == "SCHEDULED"],
        60,
        "the scheduler to plan the nightly runs",
    )
    assert all(r["expected_start_time"][11:16] == "02:00" for r in scheduled)  # the server runs in UTC
    worker = processes.start("worker", PREFECT, "worker", "start", "--pool", POOL)

    processes.run(PREFECT, "deployment", "run", "retrain/nightly")
    run = _wait(lambda: _final(_flow_runs(api, "retrain/nightly")), 420, "the retraining run")
    assert run["state"]["type"] == "COMPLETED", run["state"]
    current = json.loads((registry / "current.json").read_text())
    assert current["accuracy"] > 0.8 and (registry / current["bundle"] / "weights.safetensors").is_file()

    processes.start(
        "watcher", sys.executable, "-m", "rnnlib_deployments.watcher", str(drop), "--interval", "0.5", "--batch", "10"
    )
    names = "".join(f"{n}\n" for n in ["Rossi", "Bianchi", "Müller", "Schmidt", "Esposito", "Wagner"])
    (drop / ".batch-1.txt").write_text(names)  # written under a dot-name, then renamed
    os.replace(drop / ".batch-1.txt", drop / "batch-1.txt")
    run = _wait(lambda: _final(_flow_runs(api, SCORING)), 300, "the triggered scoring run")
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert _scored_paths([run]) == [str(drop / "batch-1.txt")]
    manifest = json.loads((_output(drop / "batch-1.txt", scored) / MANIFEST).read_text())
    assert manifest["complete"] and manifest["rows"] == manifest["scored"] == 6
    assert manifest["bundle_version"] == current["version"]
    assert set(manifest["labels"]) <= {"German", "Italian"}
    scoring = json.loads(urllib.request.urlopen(f"{api}/deployments/name/{SCORING}", timeout=10).read())
    limit = scoring.get("global_concurrency_limit") or {}
    assert limit.get("limit") == 2 or scoring.get("concurrency_limit") == 2  # two scoring runs at a time

    # a name with glob characters is scored as it is; a link is refused; a replaced file is scored again
    (drop / "report[2024].txt").write_text("Rossi\nWagner\n")
    os.symlink(tmp_path / "work", drop / "link.txt")
    (drop / "batch-1.txt").write_text("Bianchi\n")
    runs = _wait(lambda: _files_done(_flow_runs(api, SCORING), 3), 300, "two more files scored")
    assert sorted(_scored_paths(runs)) == sorted([str(drop / "batch-1.txt")] * 2 + [str(drop / "report[2024].txt")])
    assert json.loads((_output(drop / "report[2024].txt", scored) / MANIFEST).read_text())["scored"] == 2
    assert json.loads((_output(drop / "batch-1.txt", scored) / MANIFEST).read_text())["scored"] == 1
    os.unlink(drop / "link.txt")

    drained = _drop_burst(processes, api, drop, scored, worker, done_before=3)
    print(f"the burst drained in {drained:.0f} s on the SQLite-backed server")

    # at most one retraining at a time: two asked for at once run one after the other
    processes.run(PREFECT, "deployment", "run", "retrain/nightly")
    processes.run(PREFECT, "deployment", "run", "retrain/nightly")
    runs = _wait(lambda: _completed(_flow_runs(api, "retrain/nightly"), 3), 420, "two more retraining runs")
    spans = sorted((datetime.fromisoformat(r["start_time"]), datetime.fromisoformat(r["end_time"])) for r in runs)
    assert all(earlier[1] <= later[0] for earlier, later in zip(spans, spans[1:])), spans
    shutil.rmtree(tmp_path / "work", ignore_errors=True)


@pytest.fixture
def postgres_backed_server(postgres, tmp_path, datasets) -> Iterator[tuple[Processes, str]]:
    yield from _server(tmp_path, datasets, {"PREFECT_API_DATABASE_CONNECTION_URL": postgres})


def test_the_file_burst_on_a_postgres_backed_server(
    postgres_backed_server, postgres, tmp_path, names_data, names_bundle
):
    """The deployments on a Prefect server whose database is PostgreSQL (as production runs it):
    the 50-file burst is scored, every row once, with no "database is locked", and the runs are
    rows of the Postgres database."""
    from rnnlib.scoring.registry import promote

    registry, scored, drop = tmp_path / "models", tmp_path / "scored", tmp_path / "incoming"
    drop.mkdir()
    assert promote(registry, names_bundle, names_data.ingest.path, names_data.split.path).promoted
    processes, api = postgres_backed_server
    processes.run(PREFECT, "work-pool", "create", POOL, "--type", "process")
    processes.run(
        sys.executable,
        "-m",
        "rnnlib_deployments.deploy",
        "--pool",
        POOL,
        "--dataset",
        "names",
        "--registry",
        str(registry),
        "--output-root",
        str(scored),
        "--scoring-concurrency",
        "2",
    )
    worker = processes.start("worker", PREFECT, "worker", "start", "--pool", POOL)
    processes.start(
        "watcher", sys.executable, "-m", "rnnlib_deployments.watcher", str(drop), "--interval", "0.5", "--batch", "10"
    )
    drained = _drop_burst(processes, api, drop, scored, worker, done_before=0)
    print(f"the burst drained in {drained:.0f} s on the PostgreSQL-backed server")
    server_log = (tmp_path / "logs" / "server.log").read_text()
    assert "database is locked" not in server_log
    runs = subprocess.run(
        [
            "psql",
            postgres.replace("+asyncpg", ""),
            "-tAc",
            "select count(*) from flow_run where state_type = 'COMPLETED'",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert int(runs) >= 5  # the burst's runs, in Postgres


def test_an_authenticated_server_and_the_ad_hoc_deployment_confined_to_its_roots(
    authenticated_server, names_bundle, tmp_path
):
    """With PREFECT_SERVER_API_AUTH_STRING the API refuses whoever does not present it (a bare
    request, a CLI without PREFECT_API_AUTH_STRING), and works for the worker, the CLI and the
    watcher's event that do. The ad-hoc scoring deployment scores inside its --score-root and
    refuses an input outside it, by name."""
    import urllib.error

    processes, api = authenticated_server
    with pytest.raises(urllib.error.HTTPError, match="401"):
        _post(api, "/flows/filter", {})
    anonymous = {k: v for k, v in processes.env.items() if k != "PREFECT_API_AUTH_STRING"}
    refused = subprocess.run(
        [PREFECT, "work-pool", "ls"], cwd=REPO, env=anonymous, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode != 0 and "401" in refused.stdout + refused.stderr

    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "in").mkdir(parents=True)
    outside.mkdir()
    (root / "in" / "names.txt").write_text("Rossi\nWagner\n")
    (outside / "names.txt").write_text("Smith\n")
    shutil.copytree(names_bundle, root / "bundle")
    processes.run(PREFECT, "work-pool", "create", POOL, "--type", "process")
    processes.run(
        sys.executable,
        "-m",
        "rnnlib_deployments.deploy",
        "--pool",
        POOL,
        "--registry",
        str(tmp_path / "models"),
        "--output-root",
        str(root / "scored"),
        "--score-root",
        str(root),
    )
    processes.start("worker", PREFECT, "worker", "start", "--pool", POOL)

    def ad_hoc(inputs: Path, output: Path) -> dict:
        config = {
            "bundle": str(root / "bundle"),
            "inputs": [{"path": str(inputs)}],
            "output": str(output),
            "dask": {"processes": False},
        }
        out = processes.run(PREFECT, "deployment", "run", "score/ad-hoc", "--param", f"config={json.dumps(config)}")
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
        return _wait(
            lambda: _final([r for r in _flow_runs(api, "score/ad-hoc", AUTH) if r["id"] == run_id]),
            300,
            "the ad-hoc scoring run",
        )

    run = ad_hoc(root / "in" / "names.txt", root / "out")
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert json.loads((root / "out" / MANIFEST).read_text())["scored"] == 2
    run = ad_hoc(outside / "names.txt", root / "out-2")
    assert run["state"]["type"] == "FAILED"
    assert f"{outside / 'names.txt'}: outside the folders this run may use" in run["state"]["message"]
    assert not (root / "out-2").exists()

    drop = tmp_path / "drop"  # the watcher, given the auth string, gets its event confirmed
    drop.mkdir()
    (drop / "more.txt").write_text("Bianchi\n")
    processes.start(
        "watcher", sys.executable, "-m", "rnnlib_deployments.watcher", str(drop), "--interval", "0.5", "--quiet", "0"
    )
    log = tmp_path / "logs" / "watcher.log"
    _wait(lambda: "announced more.txt" in log.read_text(), 120, "the watcher's event to be confirmed")
