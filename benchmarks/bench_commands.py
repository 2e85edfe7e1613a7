"""Benchmark: what a user waits for. Every figure is a whole command, run as a subprocess and timed
from start to exit: interpreter start-up, imports, Prefect, the Dask cluster and model loading
included. All in one run:

prepare (the 50,000 IMDB reviews of the aclImdb folders, the preprocessing of bench_prepare.py):
  plain-regex / plain-set  the tutorials' plain script (plain_recipes.py prepare-imdb), stop words
                           removed by the alternation regex or by set lookup;
  rnnlib cold              `rnnlib prepare` into an empty work dir;
  rnnlib cached            the same command again: every stage reused (no flow run is started);
  rnnlib cached --flow     the same, forcing a Prefect flow run: what Prefect itself costs;
  stages                   the stages' own seconds in the cold run, as the command reports them;
each without a Prefect server (a temporary one per command) and with one running.

score (the 50,000 unlabelled IMDB reviews, `--rows` fewer; an untrained bundle of the IMDB recipe
unless --bundle is given: speed does not depend on the weights):
  plain                    the plain script (plain_recipes.py score-jsonl);
  rnnlib cold              `rnnlib score` into an empty output, with and without a server;
  rnnlib rerun             the same command again (the finished run is recognised, nothing scored).

Usage: python benchmarks/bench_commands.py [--datasets ../shared/datasets] [--only prepare|score]
                                           [--rows 50000] [--bundle DIR]
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent
RNNLIB = str(Path(sys.executable).parent / "rnnlib")  # the command a user runs
PREPARE_SETTINGS = [
    "source.dataset=imdb",
    "preprocess.level=word",
    "preprocess.strip_html=true",
    "preprocess.lowercase=true",
    "preprocess.punctuation=remove",
    "preprocess.stopwords=true",
]  # bench_prepare.PREPROCESS, as a user sets it


def run(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall-clock seconds of a command, and its output; a failure stops the benchmark."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return seconds, done.stdout


def stage_seconds(output: str) -> float:
    """The sum of the stage table's seconds that `rnnlib prepare` prints (`| stage | built | 1.23 |`)."""
    return sum(float(m.group(1)) for m in re.finditer(r"^\| \w+ \| (?:built|reused) \| ([\d.]+) \|$", output, re.M))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrefectServer:
    """A `prefect server start` of its own (its own PREFECT_HOME), stopped on exit."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.env = {**env, "PREFECT_HOME": str(home)}
        self.url = f"http://127.0.0.1:{self.port}/api"

    def __enter__(self) -> PrefectServer:
        start = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=1)
                break
            except OSError:
                if self.process.poll() is not None or time.perf_counter() - start > 300:
                    sys.exit("the Prefect server did not start")
                time.sleep(0.25)
        self.startup = time.perf_counter() - start
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def settings(prefect_home: Path, datasets: Path, api_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(prefect_home),
        RNNLIB_DATASETS_MIRROR=str(datasets),
        NLTK_DATA=env.get("NLTK_DATA", str(REPO.parent / "shared" / "nltk_data")),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def first_prefect_use(env: dict[str, str]) -> float:
    """Create the Prefect database of a new PREFECT_HOME (once per machine for a user)."""
    seconds, _ = run([sys.executable, "-c", "from prefect import flow; flow(lambda: 1)()"], env)
    return seconds


def row(name: str, seconds: float, plain: float) -> None:
    print(f"  {name:<34} {seconds:>8.2f} s {plain / seconds:>8.2f}x")


def bench_prepare(tmp: Path, envs: dict[str, dict[str, str]], datasets: Path) -> None:
    plain: dict[str, float] = {}
    for variant in ("regex", "set"):
        plain[variant], _ = run(
            [
                sys.executable,
                str(BENCHMARKS / "plain_recipes.py"),
                "prepare-imdb",
                str(datasets),
                str(tmp),
                "--stopwords",
                variant,
            ],
            envs["no server"],
        )
    print("\nprepare, IMDB 50,000 reviews (x: the plain-regex script's time / this)")
    row("plain-regex (tutorial)", plain["regex"], plain["regex"])
    row("plain-set", plain["set"], plain["regex"])
    for label, env in envs.items():
        work = tmp / f"work-{label.replace(' ', '-')}"
        command = [
            RNNLIB,
            "prepare",
            "--work-dir",
            str(work),
            *itertools.chain(*(("--set", s) for s in PREPARE_SETTINGS)),
        ]
        cold, output = run(command, env)
        cached, _ = run(command, env)
        flow, _ = run([*command, "--flow"], env)
        row(f"rnnlib cold ({label})", cold, plain["regex"])
        row("  its stages' own seconds", stage_seconds(output), plain["regex"])
        row(f"rnnlib cached ({label})", cached, plain["regex"])
        row(f"rnnlib cached --flow ({label})", flow, plain["regex"])
        shutil.rmtree(work)


def bench_score(tmp: Path, envs: dict[str, dict[str, str]], datasets: Path, rows: int, bundle: Path | None) -> None:
    import bench_score

    reviews = bench_score.read_reviews(datasets / "imdb" / "unsup.jsonl.gz", rows)
    dump = tmp / "reviews.jsonl.gz"
    with gzip.open(dump, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in reviews)
    bundle = bundle or bench_score.make_bundle(reviews, tmp / "recipe", bench_score.MODEL)
    plain, _ = run(
        [
            sys.executable,
            str(BENCHMARKS / "plain_recipes.py"),
            "score-jsonl",
            str(dump),
            str(bundle),
            str(rows),
            str(tmp),
        ],
        envs["no server"],
    )
    print(f"\nscore, {len(reviews)} unlabelled IMDB reviews (x: the plain script's time / this)")
    row("plain", plain, plain)
    for label, env in envs.items():
        out = tmp / f"scores-{label.replace(' ', '-')}"
        command = [RNNLIB, "score", str(bundle), str(dump), "-o", str(out), "--id-column", "id"]
        cold, _ = run(command, env)
        rerun, _ = run(command, env)
        row(f"rnnlib cold ({label})", cold, plain)
        row(f"rnnlib rerun ({label})", rerun, plain)
        shutil.rmtree(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--only", choices=["prepare", "score"])
    parser.add_argument("--rows", type=int, default=50_000, help="reviews scored")
    parser.add_argument("--bundle", type=Path, help="a trained bundle to score with")
    args = parser.parse_args()
    sys.path.insert(0, str(BENCHMARKS))
    import torch

    print(
        f"{os.cpu_count()} cores, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        "every figure one whole command (wall clock)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        home = tmp / "prefect-home"
        no_server = settings(home, args.datasets, None)
        print(f"first Prefect use of a new PREFECT_HOME (database created; once): {first_prefect_use(no_server):.1f} s")
        with PrefectServer(tmp / "server-home", no_server) as server:
            print(f"`prefect server start` until healthy: {server.startup:.1f} s (once; it keeps running)")
            envs = {"no server": no_server, "server": settings(home, args.datasets, server.url)}
            if args.only in (None, "prepare"):
                bench_prepare(tmp, envs, args.datasets)
            if args.only in (None, "score"):
                bench_score(tmp, envs, args.datasets, args.rows, args.bundle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
