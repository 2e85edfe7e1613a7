"""Fault injection: real `rnnlib` commands SIGKILLed at points chosen by what the run has done
(a stage's output appearing, a checkpoint or a scored partition written), never by a delay that a
faster or slower CPU would move, then run again, must end with the outputs of an uninterrupted
run, every row once, and no process left behind;
a scoring run over a corpus holding every kind of bad input rejects each bad row with its
reason, refuses each unreadable file with its reason, and scores the rest."""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rnnlib.common.storage import MANIFEST
from rnnlib.config import InputSpec, ScoreConfig
from rnnlib.scoring.output import REJECTS, SCORES

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
MARKER = "RNNLIB_FAULT_TEST_RUN"
STAGES = ("ingest", "preprocess", "split", "vocab", "tensorize", "fit", "baseline", "evaluate")
WORDS = {
    "sport": "goal match team coach league score win",
    "tech": "chip code cloud data phone app web",
    "money": "bank stock price market fund trade rate",
}


def _environment(tmp_path: Path) -> dict[str, str]:
    """The test session's Prefect server (so a command starts no server of its own)."""
    from prefect.settings import PREFECT_API_URL

    return {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PYTHONPATH": str(REPO),
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }


def _headlines(path: Path, rows: int) -> None:
    rng = random.Random(0)
    lines = ["id,text,label"]
    for i in range(rows):
        label = rng.choice(sorted(WORDS))
        words = WORDS[label].split() + WORDS[rng.choice(sorted(WORDS))].split()[:2]
        lines.append(f"h{i},{' '.join(rng.choices(words, k=rng.randint(3, 9)))},{label}")
    path.write_text("\n".join(lines) + "\n")


def _train_command(data: Path, work: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rnnlib_flows.cli",
        "train",
        "--work-dir",
        str(work),
        "--set",
        f"source.inputs=[{{path: {data}, id_column: id}}]",
        "--set",
        "source.partition_rows=150",
        "--set",
        "preprocess.level=word",
        "--set",
        "dask.n_workers=2",
        "--set",
        "model={cell: gru, embedding_dim: 16, hidden_size: 24, bidirectional: false}",
        "--set",
        "train={epochs: 4, batch_size: 32, patience: 10}",
        "--set",
        "evaluate.graph_engines=false",
    ]


class Run:
    """A command in a process of its own, its output in a file (a pipe could be held open by a
    leftover process), its environment marked so that every process it starts can be found."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.marker = uuid.uuid4().hex
        self.log = log
        self.start = time.monotonic()
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                command, cwd=REPO, env={**env, MARKER: self.marker}, stdout=out, stderr=subprocess.STDOUT
            )

    def watch(self, until: float) -> bool:
        """Wait until `until` seconds after the start; True if the command is still running."""
        while time.monotonic() - self.start < until:
            if self.process.poll() is not None:
                return False
            time.sleep(0.02)
        return self.process.poll() is None

    def follow(self, marker: Path) -> float | None:
        """Follow the command to its end; return when `marker` first existed (seconds after start)."""
        seen = None
        while self.watch(time.monotonic() - self.start + 0.05):
            if seen is None and marker.exists():
                seen = time.monotonic() - self.start
        return seen

    def finish(self) -> None:
        self.process.wait(timeout=600)
        assert self.process.returncode == 0, self.log.read_text()[-3000:]

    def kill(self) -> None:
        """SIGKILL the command alone, as the kernel's OOM killer would: its children are left to
        the command's watchdog."""
        self.process.kill()
        self.process.wait()

    def assert_nothing_left(self) -> None:
        """No process the command started (its environment carries the marker) is running."""
        deadline = time.monotonic() + 30
        while (left := _carrying(self.marker)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, left


def _carrying(marker: str) -> list[str]:
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if process.environ().get(MARKER) == marker and process.status() != psutil.STATUS_ZOMBIE:
                found.append(" ".join(process.info["cmdline"] or [])[:200])
        except psutil.Error:
            continue
    return found


def _done_stages(work: Path) -> tuple[str, ...]:
    return tuple(
        s
        for s in STAGES
        if (work / s).is_dir()
        and any((d / MANIFEST).exists() for d in (work / s).iterdir() if d.name[0] != "." and "partial" not in d.name)
    )


def _only(work: Path, stage: str) -> Path:
    (found,) = [d for d in (work / stage).iterdir() if not d.name.startswith(".")]
    return found


def _outputs(work: Path) -> dict:
    """What a train run leaves: the split, the vocabulary, the shards, the weights, the metrics."""
    from safetensors.torch import load_file

    tensors = _only(work, "tensorize")
    bundle = _only(work, "evaluate") / "bundle"
    metrics = json.loads((bundle / "metrics.json").read_text())
    return {
        "shards": {
            split: pq.read_table(tensors / split).sort_by("id").select(["id", "ids", "label"])
            for split in ("train", "val", "test")
        },
        "split": pq.read_table(_only(work, "split")).sort_by("id"),
        "vocab": (_only(work, "vocab") / "vocab.json").read_text(),
        "weights": load_file(bundle / "weights.safetensors"),
        "test": {k: metrics[k] for k in ("accuracy", "rows")},
    }


def _assert_same(got: dict, expected: dict, rows: int) -> None:
    ids = [i for split in got["shards"].values() for i in split["id"].to_pylist()]
    assert len(ids) == len(set(ids)) == rows  # every row once
    assert got["split"].equals(expected["split"]) and got["vocab"] == expected["vocab"]
    for split, table in expected["shards"].items():
        assert got["shards"][split].equals(table), split
    # training resumed from a checkpoint equals an uninterrupted one up to float summation order
    assert all(torch.allclose(got["weights"][k], w, atol=1e-5) for k, w in expected["weights"].items())
    assert got["test"] == pytest.approx(expected["test"], abs=2 / rows)


def _appeared(pattern: str, root: Path, since: float) -> bool:
    """Whether something matching `pattern` under `root` (hidden scratch folders included) was
    written after `since` (a time.time())."""
    for path in root.glob(pattern):
        try:
            if path.stat().st_mtime > since:
                return True
        except FileNotFoundError:  # renamed into place meanwhile
            continue
    return False


def _kill_chain(command: list[str], env: dict[str, str], root: Path, targets: list[str], describe, log: Path) -> list:
    """Run `command` again and again, killing each run the moment it has written something
    matching the next target (a glob under `root`, hidden scratch folders included). Each killed
    run is followed by the next (which resumes it); a last run finishes. Returns where each kill
    landed (by `describe()`), after checking no process any run started is left."""
    landed = []
    for pattern in targets:
        since = time.time()
        run = Run(command, env, log)
        while run.watch(time.monotonic() - run.start + 0.02) and not _appeared(pattern, root, since):
            pass
        if run.process.poll() is None:
            run.kill()
            landed.append((pattern, describe()))
        else:
            run.finish()
        run.assert_nothing_left()
    last = Run(command, env, log)
    last.follow(root)
    last.finish()
    last.assert_nothing_left()
    return landed


def test_train_killed_in_every_stage_resumes_to_the_uninterrupted_result(tmp_path):
    rows = 1500
    data = tmp_path / "headlines.csv"
    _headlines(data, rows)
    env = _environment(tmp_path)
    reference = Run(_train_command(data, tmp_path / "reference"), env, tmp_path / "reference.log")
    reference.follow(tmp_path / "reference")
    reference.finish()
    reference.assert_nothing_left()

    work = tmp_path / "killed"
    # each stage's scratch folder appearing (the stage has started), the first preprocessed
    # partition, the checkpoints of epochs 1 and 2: each followed by more work, so each kill lands.
    # The baseline starts beside the fit, as soon as the data is tensorized.
    targets = [
        "ingest/*",
        "preprocess/*",
        "preprocess/*/part-*",
        "split/*",
        "vocab/*",
        "tensorize/*",
        "baseline/*",
        "fit/*.partial/last.pt",
        "fit/*.partial/last.pt",
        "evaluate/*",
    ]
    landed = _kill_chain(
        _train_command(data, work), env, work, targets, lambda: _done_stages(work), tmp_path / "killed.log"
    )
    _assert_same(_outputs(work), _outputs(tmp_path / "reference"), rows)
    print(f"train: {len(landed)} kill points (target, stages finished by then): {landed}")
    assert [target for target, _ in landed] == targets, landed
    finished = [stages for _, stages in landed]
    assert all(set(a) <= set(b) for a, b in zip(finished, finished[1:])), landed  # in pipeline order
    assert "tensorize" not in finished[0] and "fit" in finished[-1], landed


def test_score_killed_between_partitions_resumes_with_every_row_scored_once(names_bundle, datasets, tmp_path):
    rows = 4000
    dump = tmp_path / "dump"
    dump.mkdir()
    names = datasets.glob("names/**/*.txt")
    surnames = sorted({line for f in names for line in f.read_text().split()})
    rng = random.Random(1)
    for part in range(4):
        with gzip.open(dump / f"part-{part}.txt.gz", "wt") as fh:
            fh.writelines(rng.choice(surnames) + "\n" for _ in range(rows // 4))
    env = _environment(tmp_path)

    def command(out: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "rnnlib_flows.cli",
            "score",
            str(names_bundle),
            str(dump),
            "-o",
            str(out),
            "--set",
            "partition_rows=100",
            "--set",
            "dask.n_workers=2",
            "--set",
            "batch_size=16",
        ]

    reference = Run(command(tmp_path / "reference"), env, tmp_path / "reference.log")
    reference.follow(tmp_path / "reference")
    reference.finish()
    expected = pq.read_table(tmp_path / "reference" / SCORES).sort_by("id")

    out = tmp_path / "killed"
    # inputs staged, then after each of three runs has scored a partition of its own
    targets = ["_staging/*", "scores/part-*", "scores/part-*", "scores/part-*"]
    landed = _kill_chain(
        command(out), env, out, targets, lambda: len(list((out / SCORES).glob("part-*"))), tmp_path / "killed.log"
    )
    got = pq.read_table(out / SCORES).sort_by("id")
    assert got.num_rows == rows and len(set(got["id"].to_pylist())) == rows
    assert got["label"].equals(expected["label"]) and got["id"].equals(expected["id"])
    assert np.allclose(got["probability"].to_numpy(), expected["probability"].to_numpy(), atol=1e-5)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["complete"] and manifest["rows"] == manifest["scored"] == rows
    print(f"score: {len(landed)} kill points (target, partitions scored by then): {landed}")
    assert [target for target, _ in landed] == targets, landed
    scored = [n for _, n in landed]
    assert scored == sorted(scored) and scored[-1] < 40, landed  # killed before the 40 partitions were done


def test_a_corpus_of_every_bad_input_class_is_accounted_row_by_row(names_bundle, tmp_path):
    """One scoring run over a folder holding every kind of bad input the readers know: each bad
    row is rejected with its reason, each unreadable file is reported with its reason, every
    good row is scored, and the manifest balances."""
    dump = tmp_path / "dump"
    dump.mkdir()
    long = "Smith" * 50_000  # 250,000 bytes, over the 240,000-byte record bound below
    deep = "[" * 100_000 + "]" * 100_000
    (dump / "rows.jsonl").write_text(
        "\n".join(
            [
                '{"text": "Rossi"}',
                '{"text": null}',
                "{broken",
                "[1, 2]",
                '{"text": "x", "deep": ' + deep + "}",
                '{"text": ' + "9" * 5000 + "}",
                '{"text": "   "}',
                '{"text": "' + long + '"}',
                '{"text": "Müller"}',
            ]
        )
        + "\n"
    )
    (dump / "rows.csv").write_bytes(b'text\nWagner\nbad \xff bytes\nEsposito,extra field\n""\nSchmidt\n')
    (dump / "lines.txt").write_text(f"Bianchi\n{long}\nDubois\n{long}")  # the last line unterminated
    with zipfile.ZipFile(dump / "two.txt.zip", "w") as archive:  # which member? refused, never half-read
        archive.writestr("a.txt", "Kowalski\n")
        archive.writestr("b.txt", "Novak\n")
    (dump / "empty.jsonl").write_text("")
    (dump / "broken.parquet").write_bytes(b"PAR1 not parquet at all")
    names = "".join(f"Nakamura{i}\n" for i in range(5000)).encode()
    (dump / "cut.txt.gz").write_bytes(gzip.compress(names)[:2000])  # a truncated download
    pq.write_table(pa.table({"text": ["Ivanov", None, "Papadopoulos"]}), dump / "good.parquet")

    from rnnlib_flows.score import score_flow

    out = tmp_path / "out"
    config = ScoreConfig(
        bundle=str(names_bundle),
        inputs=[InputSpec(path=str(dump), max_record_bytes=240_000)],
        output=str(out),
        max_length=10,
        dask={"n_workers": 2, "processes": False},
    )
    state = score_flow(config, return_state=True)
    assert state.is_failed()  # some files were refused: the flow run says so, the rest is written
    report = json.loads((out / MANIFEST).read_text())

    too_long = "record longer than 240000 bytes (source's max_record_bytes)"
    files = {name.removeprefix("dump/"): f for name, f in report["files"].items()}
    assert {name: f["rejected"] for name, f in files.items()} == {
        "rows.jsonl": {"null text": 1, "malformed JSON": 3, "JSON nested too deeply": 1, "empty text": 1, too_long: 1},
        "rows.csv": {
            "undecodable bytes (not UTF-8)": 1,
            "malformed row (more fields than the header)": 1,
            "empty text": 1,
        },
        "lines.txt": {too_long: 2},
        "good.parquet": {"null text": 1},
    }
    assert {name: f["scored"] for name, f in files.items()} == {
        "rows.jsonl": 2,
        "rows.csv": 2,
        "lines.txt": 2,
        "good.parquet": 2,
    }
    failed = {name.removeprefix("dump/"): reason for name, reason in report["failed"].items()}
    print("refused files:", failed)
    assert set(failed) == {"two.txt.zip", "empty.jsonl", "broken.parquet", "cut.txt.gz"}
    assert "exactly one file" in failed["two.txt.zip"] and "empty" in failed["empty.jsonl"]
    assert "corrupt Parquet" in failed["broken.parquet"]
    assert "corrupt or truncated compressed file" in failed["cut.txt.gz"]
    assert not report["complete"]  # a refused file keeps the run open: fixed, it is read next time
    assert report["rows"] == report["scored"] + sum(report["rejected"].values()) == 21
    rejects = pq.read_table(out / REJECTS).to_pandas()
    assert len(rejects) == sum(report["rejected"].values()) and rejects["reason"].notna().all()
    scores = pq.read_table(out / SCORES).to_pandas().set_index("id")
    assert len(scores) == report["scored"] == 8
    assert scores.loc["dump/good.parquet:3", "truncated"]  # longer than max_length: scored, flagged
