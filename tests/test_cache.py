"""`rnnlib cache list|prune`: stage outputs by age and use, never one a running stage holds."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rnnlib.common.locks import file_lock
from rnnlib.config import PrepareConfig
from rnnlib.prepare.pipeline import prepare
from rnnlib.stages import cached_outputs, lock_file, prune, reused
from rnnlib_flows.cli import main


def _prepared(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f"doc {i} words,{i % 2}\n" for i in range(40)))
    return prepare(
        PrepareConfig.model_validate(
            {
                "source": {"inputs": [{"path": str(tmp_path / "d.csv")}]},
                "preprocess": {"level": "word"},
                "work_dir": str(tmp_path / "w"),
            }
        )
    )


def _age(folder: Path, days: float) -> None:
    then = time.time() - days * 86400
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (then, then))


def test_prune_removes_old_outputs_but_not_kept_or_held_ones(tmp_path, capsys):
    data = _prepared(tmp_path)
    outputs = cached_outputs(tmp_path / "w")
    assert sorted(o.stage for o in outputs) == sorted(s.stage for s in data.stages) and all(o.complete for o in outputs)
    for stage in data.stages:
        _age(Path(stage.path), days=10)
    assert main(["cache", "prune", "--work-dir", str(tmp_path / "w"), "--older-than", "5", "--dry-run"]) == 0
    assert "would remove 5 outputs" in capsys.readouterr().out and len(cached_outputs(tmp_path / "w")) == 5

    with file_lock(lock_file(data.preprocess.path), shared=True):  # a running stage reads it
        removed = prune(tmp_path / "w", older_than_days=5, keep={data.tensorize.key})
    assert sorted(o.stage for o in removed) == ["ingest", "split", "vocab"]
    assert sorted(o.stage for o in cached_outputs(tmp_path / "w")) == ["preprocess", "tensorize"]
    assert prune(tmp_path / "w", older_than_days=30) == []  # younger than that


def test_a_pruned_stage_is_simply_built_again(tmp_path):
    data = _prepared(tmp_path)
    prune(tmp_path / "w", older_than_days=0)
    again = _prepared(tmp_path)
    assert [s.cached for s in again.stages] == [False] * 5 and again.tensorize.key == data.tensorize.key


def test_an_output_reused_from_cache_counts_as_used(tmp_path):
    data = _prepared(tmp_path)
    for stage in data.stages:
        _age(Path(stage.path), days=10)
    assert all(s.cached for s in _prepared(tmp_path).stages)  # e.g. a nightly run served from cache
    assert prune(tmp_path / "w", older_than_days=5) == []


def test_reused_builds_nothing_and_answers_only_for_a_fully_cached_run(tmp_path):
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f"doc {i} words,{i % 2}\n" for i in range(40)))
    config = PrepareConfig.model_validate(
        {
            "source": {"inputs": [{"path": str(tmp_path / "d.csv")}]},
            "preprocess": {"level": "word"},
            "work_dir": str(tmp_path / "w"),
        }
    )
    assert reused(lambda: prepare(config)) is None
    assert cached_outputs(tmp_path / "w") == []  # nothing was built
    built = prepare(config)
    again = reused(lambda: prepare(config))
    assert again is not None and all(s.cached for s in again.stages)
    assert again.tensorize.key == built.tensorize.key
    changed = config.model_copy(update={"preprocess": config.preprocess.model_copy(update={"level": "char"})})
    assert reused(lambda: prepare(changed)) is None  # preprocess onwards would have to be built
    assert len(cached_outputs(tmp_path / "w")) == 5


def test_prune_touches_only_stage_outputs_and_refuses_a_keep_for_that_is_not_a_bundle(tmp_path, capsys):
    """A work dir shared with other things: a folder two levels down that no stage wrote (no
    manifest, no lock, not a key's name) is never removed; a mistyped --keep-for is an error,
    not a silent keep-nothing."""
    _prepared(tmp_path)
    mine = tmp_path / "w" / "notes" / "precious"
    mine.mkdir(parents=True)
    (mine / "keep.txt").write_text("mine")
    looks_like_a_key = tmp_path / "w" / "fit" / ("0" * 32)
    looks_like_a_key.mkdir(parents=True)  # a stage's name, but no stage wrote it
    for folder in [mine, looks_like_a_key, *(tmp_path / "w").glob("*/*")]:
        _age(folder, days=10)
    removed = prune(tmp_path / "w", older_than_days=5)
    assert len(removed) == 5 and (mine / "keep.txt").is_file() and looks_like_a_key.is_dir()
    assert (
        main(
            [
                "cache",
                "prune",
                "--work-dir",
                str(tmp_path / "w"),
                "--older-than",
                "5",
                "--keep-for",
                str(tmp_path / "no-such-bundle"),
            ]
        )
        == 2
    )
    assert "no-such-bundle" in capsys.readouterr().err


def test_one_stage_started_twice_at_once_is_built_once(tmp_path):
    """Two processes prepare the same data at the same moment: each stage's lock makes the second
    wait for the first and reuse its output, so every stage is built once (without the lock both
    build it, and the second's rename replaces the output the first may be reading)."""
    import json
    import subprocess
    import sys

    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f"doc {i} words here,{i % 2}\n" for i in range(20000)))
    go = tmp_path / "go"
    script = (
        "import json, sys, time; from pathlib import Path; from rnnlib.config import PrepareConfig; "
        "from rnnlib.prepare.pipeline import prepare\n"
        f"config = PrepareConfig.model_validate({{'source': {{'inputs': [{{'path': {str(tmp_path / 'd.csv')!r}}}]}}, "
        f"'preprocess': {{'level': 'word'}}, 'work_dir': {str(tmp_path / 'w')!r}}})\n"
        f"while not Path({str(go)!r}).exists(): time.sleep(0.005)\n"
        "print(json.dumps({s.stage: s.cached for s in prepare(config).stages}))"
    )
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(3)  # both started and waiting
    go.touch()
    results = [json.loads(run.communicate(timeout=300)[0]) for run in runs]
    assert all(run.returncode == 0 for run in runs)
    for stage in results[0]:
        assert sorted(r[stage] for r in results) == [False, True], (stage, results)  # built once, reused once
