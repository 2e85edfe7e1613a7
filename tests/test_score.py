"""Batch scoring: every format, ids, rejects with reasons, accounting, training/scoring parity,
the model loaded once per worker, and the score flow's resume, no-op rerun and failure report."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rnnlib.common.storage import read_json
from rnnlib.config import InputSpec, ScoreConfig, TrainFlowConfig
from rnnlib.errors import InputError
from rnnlib.modeling.bundle import load_bundle
from rnnlib.modeling.engines import ENGINES
from rnnlib.modeling.inference import predict_proba
from rnnlib.modeling.pipeline import train_model
from rnnlib.scoring.output import (
    MANIFEST,
    REJECTS,
    SCORES,
    STAGING,
    account,
    partition_input,
    plan_run,
)
from rnnlib.scoring.partition import score_partition, worker_model
from rnnlib.scoring.pipeline import ScoringFailed, score
from rnnlib.scoring.registry import held_out_rows

REPO = Path(__file__).resolve().parents[1]


def _config(bundle: Path, out: Path, *inputs: InputSpec | str, **kw) -> ScoreConfig:
    specs = [InputSpec(path=str(i)) if not isinstance(i, InputSpec) else i for i in inputs]
    return ScoreConfig(bundle=str(bundle), inputs=specs, output=str(out), **kw)


def _scores(out: Path) -> pa.Table:
    return pq.read_table(out / SCORES)


def test_every_format_keeps_ids_and_accounts_for_every_row(names_bundle, tmp_path):
    data = tmp_path / "dump"
    (data / "sub").mkdir(parents=True)
    (data / "a.csv").write_text("key,name\nk1,Smith\nk2,Rossi\n")
    (data / "b.tsv").write_text("Nakamura\t1\nDubois\t2\n")
    (data / "c.jsonl").write_text('{"text": "Ivanov", "uid": "j1"}\n{"text": "Kowalski", "uid": "j2"}\n')
    pq.write_table(pa.table({"text": ["Schmidt", "Novak"], "uid": ["p1", "p2"]}), data / "d.parquet")
    with gzip.open(data / "sub" / "e.txt.gz", "wt") as fh:
        fh.write("Papadopoulos\nO'Connor\n")
    (data / "sub" / "f.txt").write_text("Nguyen\n")
    (data / "sub" / ".partial.txt").write_text("half-writ")  # hidden: not an input
    (data / "README.md").write_text("not an input")
    out = tmp_path / "out"
    inputs = [
        InputSpec(path=str(data / "a.csv"), text_columns=["name"], id_column="key"),
        InputSpec(path=str(data / "b.tsv"), header=False, text_columns=[0], id_column=1),
        InputSpec(path=str(data / "c.jsonl"), id_column="uid"),
        InputSpec(path=str(data / "d.parquet"), id_column="uid"),
        InputSpec(path=str(data / "sub")),  # a directory: every file under it
        InputSpec(path=str(data / "*.md"), format="text"),  # a glob
    ]
    manifest = score(_config(names_bundle, out, *inputs, top_k=4))
    assert manifest.complete and manifest.rows == manifest.scored == 12
    assert manifest.ignored == [str(data / "sub" / ".partial.txt")]
    assert manifest.files["sub/e.txt.gz"].model_dump() == {"rows": 2, "scored": 2, "rejected": {}, "unscored": 0}
    scores = _scores(out).to_pandas().set_index("id")
    assert {"k1", "k2", "1", "2", "j1", "j2", "p1", "p2", "sub/e.txt.gz:1", "sub/f.txt:1", "README.md:1"} <= set(
        scores.index
    )
    labels = set(load_bundle(names_bundle).labels.labels)
    assert set(scores["label"]) <= labels
    top = scores.loc["k1", "top_k"]
    assert len(top) == 4 and top[0]["label"] == scores.loc["k1", "label"]
    assert top[0]["probability"] == pytest.approx(scores.loc["k1", "probability"])
    assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
    assert (scores["model_version"] == load_bundle(names_bundle).version).all()


def test_an_http_url_is_scored_like_a_local_file(names_bundle, http_root, tmp_path):
    root, base = http_root
    with gzip.open(root / "dump.jsonl.gz", "wt") as fh:
        fh.write('{"text": "Rossi", "id": "r"}\n{"text": "Schmidt", "id": "s"}\n')
    manifest = score(_config(names_bundle, tmp_path / "out", InputSpec(path=f"{base}/dump.jsonl.gz", id_column="id")))
    assert manifest.complete and {k: v.model_dump() for k, v in manifest.files.items()} == {
        "dump.jsonl.gz": {"rows": 2, "scored": 2, "rejected": {}, "unscored": 0}
    }
    assert sorted(_scores(tmp_path / "out")["id"].to_pylist()) == ["r", "s"]


def test_bad_rows_are_rejected_with_reasons_and_counts_add_up(names_bundle, tmp_path):
    (tmp_path / "rows.csv").write_bytes(
        b'text\nSmith\n\n""\nbad \xff bytes\n   \nRossi,extra field\nAVeryLongSurnameIndeed\n'
    )
    (tmp_path / "rows.jsonl").write_text('{"text": "Mueller"}\n{"text": null}\n{broken\n')
    out = tmp_path / "out"
    manifest = score(_config(names_bundle, out, tmp_path / "rows.csv", tmp_path / "rows.jsonl", max_length=10))
    # blank and whitespace-only lines are no CSV records (as pandas reads CSV, on either path); "" is
    assert manifest.files["rows.csv"].model_dump() == {
        "rows": 5,
        "scored": 2,
        "unscored": 0,
        "rejected": {
            "empty text": 1,
            "undecodable bytes (not UTF-8)": 1,
            "malformed row (more fields than the header)": 1,
        },
    }
    assert manifest.files["rows.jsonl"].rejected == {"malformed JSON": 1, "null text": 1}
    assert manifest.rows == 8 == manifest.scored + sum(manifest.rejected.values())
    rejects = pq.read_table(out / REJECTS).to_pandas()
    assert set(rejects["id"]) == {"rows.csv:2", "rows.csv:3", "rows.csv:4", "rows.jsonl:2", "rows.jsonl:3"}
    long = _scores(out).to_pandas().set_index("id").loc["rows.csv:5"]
    assert long["truncated"] and long["length"] == len("AVeryLongSurnameIndeed")
    assert manifest.truncated == 1


@pytest.fixture(scope="module")
def word_model(tmp_path_factory):
    """A word-level model over reviews with HTML, emoticons, entities and URLs, lower-cased and
    truncated at 12 tokens (so many rows are cut)."""
    work = tmp_path_factory.mktemp("word")
    rng = np.random.default_rng(0)
    words = {"pos": ["great", "lovely", "superb", "fun"], "neg": ["awful", "boring", "dull", "bad"]}
    rows = []
    for i in range(600):
        label = "pos" if i % 2 else "neg"
        body = " ".join(rng.choice(words[label], size=rng.integers(3, 30)))
        rows.append(
            {
                "text": f"<p>Review {i}: {body.upper() if i % 3 else body} :) <br /> see "
                f"http://x.org/{i} &amp; more ;-(</p>",
                "label": label,
            }
        )
    pd.DataFrame(rows).to_csv(work / "reviews.csv", index=False)
    config = TrainFlowConfig.model_validate(
        {
            "source": {"inputs": [{"path": str(work / "reviews.csv")}]},
            "work_dir": str(work),
            "preprocess": {
                "level": "word",
                "strip_html": True,
                "lowercase": True,
                "keep_emoticons": True,
                "placeholders": ["url", "digit"],
            },
            "tensorize": {"max_length": 12},
            "model": {"embedding_dim": 8, "hidden_size": 16, "bidirectional": True},
            "train": {"epochs": 1},
            "evaluate": {"graph_engines": False},
        }
    )
    return train_model(config)


def _assert_scoring_matches_the_shards(bundle_dir: Path, data, tmp_path: Path) -> pd.DataFrame:
    raw = held_out_rows(data.ingest.path, data.split.path)
    input_file = tmp_path / "test-text.parquet"
    pq.write_table(raw.select(["id", "text"]), input_file)
    out = tmp_path / "parity"
    score(_config(bundle_dir, out, InputSpec(path=str(input_file), id_column="id"), engine="fp32"))
    scored = _scores(out).to_pandas().set_index("id")
    shards = pq.read_table(f"{data.tensorize.path}/test")
    bundle = load_bundle(bundle_dir)
    probabilities = predict_proba(bundle.model, shards["ids"].combine_chunks(), len(bundle.labels.labels), 64)
    expected = np.array(bundle.labels.labels)[probabilities.argmax(1)]
    assert len(scored) == shards.num_rows == raw.num_rows
    ids = shards["id"].to_pylist()
    assert (scored.loc[ids, "label"].to_numpy() == expected).all()
    assert np.allclose(scored.loc[ids, "probability"].to_numpy(), probabilities.max(1), atol=1e-5)
    return scored


def test_scoring_matches_training_preprocessing(names_bundle, names_data, tmp_path):
    """Raw test-split text scored through the score path gives the predictions of the test
    shards the model was evaluated on, row for row (character level)."""
    _assert_scoring_matches_the_shards(names_bundle, names_data, tmp_path)


def test_scoring_matches_training_preprocessing_word_level(word_model, tmp_path):
    """The same at word level, through HTML stripping, entities, emoticons, URL and digit
    placeholders, lower-casing and truncation."""
    scored = _assert_scoring_matches_the_shards(Path(word_model.evaluation.bundle), word_model.data, tmp_path)
    assert scored["truncated"].sum() > len(scored) / 3


def test_scoring_runs_side_by_side(names_bundle, tmp_path):
    """Two runs at once, each into its own output, neither disturbing the other."""
    for name in ("a", "b"):
        (tmp_path / f"{name}.txt").write_text("".join(f"{name.upper()}name{i}\n" for i in range(200)))
    with ThreadPoolExecutor(2) as pool:
        reports = list(
            pool.map(
                lambda name: score(
                    _config(names_bundle, tmp_path / f"out-{name}", tmp_path / f"{name}.txt", partition_rows=20)
                ),
                "ab",
            )
        )
    assert [r.scored for r in reports] == [200, 200]
    for name in "ab":
        ids = _scores(tmp_path / f"out-{name}")["id"].to_pylist()
        assert len(set(ids)) == 200 and all(i.startswith(f"{name}.txt:") for i in ids)


def test_padding_and_batching_do_not_change_probabilities(names_bundle):
    bundle = load_bundle(names_bundle)
    ids = pa.array([[5, 6, 7], [8, 9, 10, 11, 12, 13], [4], [7, 7]], pa.list_(pa.int32()))
    together = predict_proba(bundle.model, ids, len(bundle.labels.labels), batch_size=4)
    alone = predict_proba(bundle.model, ids, len(bundle.labels.labels), batch_size=1)
    assert np.allclose(together, alone, atol=1e-5)
    assert np.allclose(together.sum(1), 1, atol=1e-5)


def test_model_is_loaded_once_per_worker(names_bundle, tmp_path, client):
    (tmp_path / "many.txt").write_text("".join(f"Name{i}\n" for i in range(300)))
    config = _config(names_bundle, tmp_path / "out", tmp_path / "many.txt", partition_rows=20)
    run = plan_run(config)
    assert run.open(overwrite=False) is None
    staged = [
        partition_input(u, i, run.staging, run.partition_rows, run.partition_bytes) for i, u in enumerate(run.units)
    ]
    parts = run.pending(staged)
    client.run(worker_model.cache_clear)
    futures = [
        client.submit(score_partition, p, run.scores_file(p.name), run.rejects_file(p.name), run.settings, pure=False)
        for p in parts
    ]
    assert sum(f.result().scored for f in futures) == 300 and len(parts) == 15
    loads = client.run(lambda: worker_model.cache_info().misses)
    assert sum(loads.values()) >= 1 and all(n <= 1 for n in loads.values())  # at most once per worker
    assert account(run, staged, {}, {}).scored == 300


def test_auto_engine_is_measured_once_per_machine_then_reused_and_named_in_the_manifest(
    names_bundle, tmp_path, monkeypatch
):
    from rnnlib.scoring import partition

    (tmp_path / "many.txt").write_text("".join(f"Name{i}\n" for i in range(300)))
    config = _config(names_bundle, tmp_path / "a", tmp_path / "many.txt", engine_cache=str(tmp_path / "engines"))
    first = score(config)
    assert first.engine in ENGINES and "same label as fp32 on" in first.engine_reason
    assert read_json(tmp_path / "a" / MANIFEST)["engine"] == first.engine
    assert len(list((tmp_path / "engines").glob("choice-*.json"))) == 1

    def measured_again(*args, **kwargs):
        raise AssertionError("the choice was measured again")

    monkeypatch.setattr(partition, "choose_engine", measured_again)
    again = score(config.model_copy(update={"output": str(tmp_path / "b")}))
    assert (again.engine, again.engine_reason) == (first.engine, first.engine_reason)
    asked = score(config.model_copy(update={"output": str(tmp_path / "c"), "engine": "int8"}))
    assert (asked.engine, asked.engine_reason) == ("int8", "asked for") and asked.scored == 300


def test_output_of_another_run_or_of_something_else_is_refused(names_bundle, tmp_path):
    (tmp_path / "a.txt").write_text("Smith\n")
    out = tmp_path / "out"
    score(_config(names_bundle, out, tmp_path / "a.txt"))
    assert score(_config(names_bundle, out, tmp_path / "a.txt")).complete
    with pytest.raises(InputError, match="holds a different scoring run"):
        score(_config(names_bundle, out, tmp_path / "a.txt", top_k=1))
    manifest = score(_config(names_bundle, out, tmp_path / "a.txt", top_k=1, overwrite=True))
    assert manifest.scored == 1 and len(_scores(out)["top_k"][0]) == 1
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="holds no scoring run"):
        score(_config(names_bundle, tmp_path / "mine", tmp_path / "a.txt", overwrite=True))
    assert (tmp_path / "mine" / "precious.txt").exists()
    with pytest.raises(InputError, match="config.json is missing"):
        score(_config(tmp_path, tmp_path / "x", tmp_path / "a.txt"))


@pytest.mark.parametrize("on_cluster", [False, True], ids=["in process", "on a Dask cluster"])
def test_the_library_run_reports_a_corrupt_file_keeps_the_rest_and_resumes(names_bundle, tmp_path, request, on_cluster):
    """`score()` without Prefect isolates a failed input as the flow does: the rest is scored
    and accounted, the run raises saying what failed, and a rerun scores only what is missing."""
    client = request.getfixturevalue("client") if on_cluster else None
    data = tmp_path / "data"
    data.mkdir()
    (data / "good.txt").write_text("".join(f"Surname{i}\n" for i in range(50)))
    (data / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    config = _config(names_bundle, tmp_path / "out", data, partition_rows=20)
    with pytest.raises(ScoringFailed, match="data/corrupt.parquet") as failed:
        score(config, client)
    assert not failed.value.report.complete and failed.value.report.files["data/good.txt"].scored == 50
    assert read_json(tmp_path / "out" / MANIFEST)["failed"].keys() == {"data/corrupt.parquet"}
    with pytest.raises(ScoringFailed) as again:  # the same run resumed: the good file is not scored again
        score(config, client)
    assert again.value.report.rows_scored_now == 0 and again.value.report.files["data/good.txt"].scored == 50


@pytest.mark.usefixtures("prefect_server")
def test_score_flow_reports_a_corrupt_file_keeps_the_rest_then_is_a_no_op(names_bundle, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from rnnlib_flows.score import score_flow

    data = tmp_path / "data"
    data.mkdir()
    (data / "good.txt").write_text("".join(f"Surname{i}\n" for i in range(50)))
    (data / "also.jsonl").write_text('{"text": "Rossi"}\n{"text": ""}\n')
    (data / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    config = _config(names_bundle, tmp_path / "out", data, partition_rows=20, dask={"n_workers": 2, "processes": False})
    state = score_flow(config, return_state=True)
    assert state.is_failed() and "data/corrupt.parquet" in state.message
    manifest = read_json(tmp_path / "out" / MANIFEST)
    assert not manifest["complete"] and list(manifest["failed"]) == ["data/corrupt.parquet"]
    assert manifest["files"]["data/good.txt"]["scored"] == 50
    assert manifest["files"]["data/also.jsonl"] == {
        "rows": 2,
        "scored": 1,
        "unscored": 0,
        "rejected": {"empty text": 1},
    }
    assert _scores(tmp_path / "out").num_rows == 51

    (data / "corrupt.parquet").unlink()  # the inputs changed: the same output is a new run
    config = config.model_copy(update={"overwrite": True})
    first = score_flow(config)
    assert first.complete and first.scored == 51 and not first.already_complete
    again = score_flow(config.model_copy(update={"overwrite": False}))
    assert again.already_complete and again.scored == 51
    with get_client(sync_client=True) as prefect:
        keys = {
            a.key
            for a in prefect.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["scoring-progress", "scoring-summary"]))
            )
        }
    assert keys == {"scoring-progress", "scoring-summary"}


@pytest.mark.slow
def test_killed_run_resumes_and_writes_every_row_exactly_once(names_bundle, tmp_path):
    """A real `rnnlib score` process is SIGKILLed mid-run, then started again: finished
    partitions are not redone, and the output holds every row once."""
    rows = 6000
    (tmp_path / "big.txt").write_text("".join(f"Surname{i % 977}x\n" for i in range(rows)))
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "rnnlib_flows.cli",
        "score",
        str(names_bundle),
        str(tmp_path / "big.txt"),
        "-o",
        str(out),
        "--set",
        "partition_rows=100",
        "--set",
        "dask.n_workers=1",
        "--set",
        "batch_size=8",
    ]
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    while len(list((out / SCORES).glob("part-*"))) < 5:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = {p.name: p.stat().st_mtime_ns for p in (out / SCORES).glob("part-*")}
    assert 5 <= len(before) < rows // 100 and not (out / MANIFEST).exists()

    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    after = {p.name: p.stat().st_mtime_ns for p in (out / SCORES).glob("part-*")}
    assert len(after) == rows // 100 and all(after[name] == t for name, t in before.items())
    ids = _scores(out)["id"].to_pylist()
    assert len(ids) == len(set(ids)) == rows
    assert not list(out.rglob("*.tmp")) and not (out / STAGING).exists()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["complete"] and manifest["scored"] == rows
    assert manifest["rows_scored_now"] == rows - 100 * len(before)
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already complete" in again.stdout


def test_baseline_is_fitted_and_scored_on_the_evaluated_rows(word_model):
    from rnnlib.modeling.baseline import fit_baseline

    data = word_model.data
    result = fit_baseline(data.preprocess.path, data.split.path, level="word", labels=data.labels)
    assert result.train_rows == data.splits["train"] and result.rows == word_model.evaluation.rows
    assert result.accuracy > 0.9  # the words give the label away


def test_a_scoring_run_keeps_its_identity_across_edits_of_code_it_does_not_run(names_bundle, tmp_path, monkeypatch):
    """A killed run can be resumed after an unrelated edit (say, to evaluation), and not after
    one to the code that scores."""
    import shutil

    from rnnlib.common import fingerprint
    from rnnlib.scoring.output import plan_run

    (tmp_path / "names.txt").write_text("Smith\nRossi\n")
    config = _config(names_bundle, tmp_path / "out", tmp_path / "names.txt")
    copy = tmp_path / "rnnlib-copy"
    shutil.copytree(fingerprint.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "PACKAGE_DIR", copy)

    def key() -> str:
        fingerprint.code_version.cache_clear()
        fingerprint.code_closure.cache_clear()
        return plan_run(config).key

    try:
        before = key()
        for edited, same in (("modeling/evaluate.py", True), ("scoring/partition.py", False)):
            (copy / edited).write_text((copy / edited).read_text() + "# edit\n")
            assert (key() == before) is same, edited
    finally:
        fingerprint.code_version.cache_clear()
        fingerprint.code_closure.cache_clear()


def test_a_huge_document_is_cut_before_tokenising_and_flagged(names_bundle):
    """Only what the model reads is tokenised: a 2 MB text costs what its first part does, and
    its score is that of the same first part."""
    from rnnlib.scoring.partition import (
        MAX_CHARS_PER_TOKEN,
        ScoringSettings,
        cut_long_texts,
        load_model,
        score_table,
    )

    loaded = load_model(names_bundle, "cpu", "fp32")
    bundle = loaded.bundle
    settings = ScoringSettings(
        bundle=str(names_bundle),
        version=bundle.version,
        top_k=1,
        max_length=20,
        batch_size=None,
        device="cpu",
        engine="fp32",
    )
    huge = "Rossi" * 400_000
    from rnnlib.prepare.ingest import CANONICAL_SCHEMA

    table = pa.table(
        {
            "id": ["a", "b"],
            "text": [huge, "Smith"],
            "label": [None, None],
            "split": [None, None],
            "source": ["f", "f"],
            "row": [1, 2],
            "reject": [None, None],
        },
        schema=CANONICAL_SCHEMA,
    )
    cut, flags = cut_long_texts(table, 20)
    assert len(cut["text"][0].as_py()) == 20 * MAX_CHARS_PER_TOKEN and flags.to_pylist() == [True, False]
    scores, rejects = score_table(table, loaded, settings)
    assert scores["truncated"].to_pylist() == [True, False] and rejects.num_rows == 0
    first = table.slice(0, 1)
    alone, _ = score_table(first.set_column(1, "text", pa.array([huge[: 20 * MAX_CHARS_PER_TOKEN]])), loaded, settings)
    assert scores["probability"][0].as_py() == pytest.approx(alone["probability"][0].as_py())


def test_scoring_reads_an_input_in_its_own_encoding(names_bundle, tmp_path):
    (tmp_path / "win.txt").write_bytes("M\xfcller\nGarc\xeda\nbad \x81\n".encode("latin-1"))
    as_utf8 = score(_config(names_bundle, tmp_path / "utf8", tmp_path / "win.txt"))
    assert as_utf8.rejected == {"undecodable bytes (not UTF-8)": 3}
    manifest = score(
        _config(names_bundle, tmp_path / "out", InputSpec(path=str(tmp_path / "win.txt"), encoding="cp1252"))
    )
    assert manifest.scored == 2 and manifest.rejected == {"undecodable bytes (not cp1252)": 1}
    assert sorted(_scores(tmp_path / "out")["id"].to_pylist()) == ["win.txt:1", "win.txt:2"]


def test_a_fifo_in_a_scored_folder_is_ignored_not_read(names_bundle, tmp_path):
    dump = tmp_path / "dump"
    dump.mkdir()
    (dump / "a.txt").write_text("Smith\nRossi\n")
    os.mkfifo(dump / "b.txt")
    manifest = score(_config(names_bundle, tmp_path / "out", dump))
    assert manifest.scored == 2 and manifest.ignored == [str(dump / "b.txt")]


@pytest.mark.usefixtures("prefect_server")
def test_a_file_replaced_after_it_was_announced_is_not_scored_as_that_version(names_bundle, names_data, tmp_path):
    """The arrival flow scores the version the watcher announced or nothing: a file replaced
    while its run waited is skipped (its new version has an event of its own), never scored
    into the old version's folder."""
    from rnnlib.scoring.registry import promote
    from rnnlib_flows.score import ArrivedFile, score_new_files_flow

    promote(tmp_path / "models", names_bundle, names_data.ingest.path, names_data.split.path)
    (tmp_path / "kept.txt").write_text("Smith\n")
    (tmp_path / "replaced.txt").write_text("Rossi\n")
    announced = [
        ArrivedFile(path=str(tmp_path / name), size=(st := (tmp_path / name).stat()).st_size, mtime_ns=st.st_mtime_ns)
        for name in ("kept.txt", "replaced.txt")
    ]
    (tmp_path / "replaced.txt").write_text("Rossi\nBianchi\n")  # replaced while the run waited
    reports = score_new_files_flow(
        announced, registry=str(tmp_path / "models"), output_root=str(tmp_path / "out"), format="text"
    )
    assert [r.scored for r in reports] == [1]
    assert [p.name.split("-")[0] for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")] == ["kept.txt"]


def test_a_rerun_scores_only_the_partitions_missing(names_bundle, tmp_path):
    """The resume mechanism alone, fast: of a run left incomplete, a rerun rewrites only the
    partitions whose scores are not on disk; the finished ones are not touched."""
    (tmp_path / "names.txt").write_text("".join(f"Name{i}\n" for i in range(120)))
    config = _config(names_bundle, tmp_path / "out", tmp_path / "names.txt", partition_rows=10)
    assert score(config).scored == 120
    parts = sorted((tmp_path / "out" / SCORES).glob("part-*"))
    before = {p.name: p.stat().st_mtime_ns for p in parts}
    (tmp_path / "out" / MANIFEST).unlink()  # as a run killed before its end leaves it
    parts[3].unlink()
    report = score(config)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / SCORES).glob("part-*")}
    assert report.complete and report.scored == 120 and report.rows_scored_now == 10
    assert after.keys() == before.keys() and [n for n in after if after[n] != before[n]] == [parts[3].name]


def test_a_run_confined_to_roots_refuses_what_lies_outside_them(names_bundle, tmp_path):
    """With `roots`, an input, bundle or output outside them is refused by name before anything
    is read or written, a link inside pointing out included; inside them the run scores."""
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    (inside / "a.txt").write_text("Smith\n")
    (outside / "secret.txt").write_text("Rossi\n")
    os.symlink(outside / "secret.txt", inside / "link.txt")
    bundle = inside / "bundle"
    shutil.copytree(names_bundle, bundle)
    roots = {"roots": [str(inside)]}
    for bundle_dir, output, path, refused in [
        (bundle, inside / "out-1", outside / "secret.txt", outside / "secret.txt"),
        (bundle, inside / "out-2", inside / "link.txt", inside / "link.txt"),
        (bundle, outside / "out", inside / "a.txt", outside / "out"),
        (names_bundle, inside / "out-3", inside / "a.txt", names_bundle),
    ]:
        with pytest.raises(InputError, match=f"{refused}: outside the folders this run may use"):
            score(_config(bundle_dir, output, path, **roots))
        assert not output.exists()
    assert score(_config(bundle, inside / "out", inside / "a.txt", **roots)).scored == 1


@pytest.mark.usefixtures("prefect_server")
def test_the_score_flow_takes_its_roots_over_the_configs(names_bundle, tmp_path):
    """The ad-hoc deployment passes `roots` beside the caller's config: a config that names
    wider roots of its own is still confined to the deployment's."""
    from rnnlib_flows.score import score_flow

    (tmp_path / "a.txt").write_text("Smith\n")
    config = _config(names_bundle, tmp_path / "out", tmp_path / "a.txt", roots=["/"])
    state = score_flow(config, roots=[str(tmp_path / "elsewhere")], return_state=True)
    assert state.is_failed() and "outside the folders this run may use" in state.message
