"""The model registry: a retrained model replaces the current one only if it is no worse on the
same test rows; scoring through a registry uses its current model."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from rnnlib.common.storage import read_json
from rnnlib.config import InputSpec, ScoreConfig
from rnnlib.errors import InputError
from rnnlib.modeling.bundle import (
    CONFIG,
    CURRENT,
    current_bundle,
    load_bundle,
    save_bundle,
)
from rnnlib.modeling.model import RNNClassifier
from rnnlib.scoring.output import SCORES, output_dir_for, output_lock
from rnnlib.scoring.pipeline import score
from rnnlib.scoring.registry import DECISIONS, accuracy, held_out_rows, promote


@pytest.fixture(scope="module")
def untrained_bundle(names_bundle, names_data, tmp_path_factory) -> Path:
    """The same architecture and vocabulary as `names_bundle`, with random weights."""
    work = tmp_path_factory.mktemp("untrained")
    trained = load_bundle(names_bundle)
    torch.manual_seed(1)
    model = RNNClassifier(len(trained.vocab.tokens), len(trained.labels.labels), trained.model.cfg)
    torch.save(model.state_dict(), work / "weights.pt")
    save_bundle(
        work / "bundle",
        work / "weights.pt",
        Path(names_data.vocab.path),
        trained.preprocess,
        trained.model.cfg,
        None,
        {},
    )
    return work / "bundle"


def test_worse_model_is_not_promoted_and_says_so(names_bundle, names_data, untrained_bundle, tmp_path):
    registry = tmp_path / "models"
    first = promote(registry, names_bundle, names_data.ingest.path, names_data.split.path)
    assert first.promoted and first.reason == "first model in the registry"
    trained_version = read_json(names_bundle / CONFIG)["version"]
    assert current_bundle(registry) == registry / "bundles" / trained_version

    worse = promote(registry, untrained_bundle, names_data.ingest.path, names_data.split.path)
    assert not worse.promoted and worse.candidate_accuracy < worse.current_accuracy
    assert worse.reason.startswith("not promoted") and trained_version in worse.reason
    assert read_json(registry / CURRENT)["version"] == trained_version

    again = promote(registry, names_bundle, names_data.ingest.path, names_data.split.path)  # as good: replaces
    assert again.promoted and again.test_rows == 3008
    assert [json.loads(line)["promoted"] for line in open(registry / DECISIONS)] == [True, False, True]


def test_accuracy_through_the_scoring_path_matches_evaluation_on_shards(names_bundle, names_data):
    rows = held_out_rows(names_data.ingest.path, names_data.split.path)
    shards = pq.read_table(f"{names_data.tensorize.path}/test")
    assert rows.num_rows == shards.num_rows
    bundle = load_bundle(names_bundle)
    from rnnlib.modeling.inference import predict_proba

    predicted = predict_proba(bundle.model, shards["ids"].combine_chunks(), len(bundle.labels.labels), 64)
    expected = float((predicted.argmax(1) == shards["label"].to_numpy()).mean())
    assert accuracy(names_bundle, rows) == pytest.approx(expected)


def test_scoring_through_a_registry_uses_its_current_model(names_bundle, names_data, tmp_path):
    registry = tmp_path / "models"
    promote(registry, names_bundle, names_data.ingest.path, names_data.split.path)
    (tmp_path / "new.txt").write_text("Smith\nRossi\n")
    out = output_dir_for(str(tmp_path / "new.txt"), tmp_path / "scored")
    manifest = score(
        ScoreConfig(bundle=str(registry), inputs=[InputSpec(path=str(tmp_path / "new.txt"))], output=str(out))
    )
    assert manifest.scored == 2 and manifest.bundle_version == read_json(names_bundle / CONFIG)["version"]
    assert pq.read_table(out / SCORES).num_rows == 2


def test_two_runs_never_write_the_same_output(tmp_path):
    a = output_dir_for(str(tmp_path / "in" / "a.jsonl"), tmp_path / "scored")
    b = output_dir_for(str(tmp_path / "other" / "a.jsonl"), tmp_path / "scored")
    assert a != b and a.name.startswith("a.jsonl-")
    with output_lock(a):
        with pytest.raises(InputError, match="another scoring run is writing"):
            with output_lock(a):
                pass
        with output_lock(b):  # another output: no wait
            pass
    with output_lock(a):  # released
        pass


def test_models_list_promote_by_hand_and_rollback(names_bundle, names_data, untrained_bundle, tmp_path, capsys):
    from rnnlib_flows.cli import main

    registry = tmp_path / "models"
    promote(registry, untrained_bundle, names_data.ingest.path, names_data.split.path)
    promote(registry, names_bundle, names_data.ingest.path, names_data.split.path)  # better: current
    trained, untrained = (read_json(b / CONFIG)["version"] for b in (names_bundle, untrained_bundle))
    assert main(["models", "list", str(registry)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 2 and listed[1].startswith(f"* {trained}") and listed[0].startswith(f"  {untrained}")

    assert main(["models", "rollback", str(registry)]) == 0
    assert read_json(registry / CURRENT)["version"] == untrained
    assert main(["models", "promote", str(registry), trained]) == 0
    assert read_json(registry / CURRENT)["version"] == trained
    assert main(["models", "promote", str(registry), "no-such-version"]) == 2
    assert "no bundle 'no-such-version'" in capsys.readouterr().err
    reasons = [json.loads(line)["reason"] for line in open(registry / DECISIONS)]
    assert reasons[2].startswith("rolled back from") and reasons[3] == "promoted by hand (rnnlib models promote)"


def test_two_promotions_at_once_compare_one_after_the_other(names_bundle, names_data, untrained_bundle, tmp_path):
    """Two retrains finish together: under the registry's lock the second compares against the
    model the first installed, not the incumbent both started from (without the lock both see
    the untrained incumbent and both decisions say so)."""
    import subprocess
    import sys
    import time

    registry = tmp_path / "models"
    promote(registry, untrained_bundle, names_data.ingest.path, names_data.split.path)
    go = tmp_path / "go"
    script = (
        "import sys, time; from pathlib import Path; from rnnlib.scoring.registry import promote\n"
        f"while not Path({str(go)!r}).exists(): time.sleep(0.005)\n"
        f"promote({str(registry)!r}, {str(names_bundle)!r}, {names_data.ingest.path!r}, "
        f"{names_data.split.path!r})"
    )
    runs = [subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    time.sleep(3)  # both started and waiting
    go.touch()
    errors = [run.communicate(timeout=300)[1] for run in runs]
    assert all(run.returncode == 0 for run in runs), errors
    untrained, trained = (read_json(b / CONFIG)["version"] for b in (untrained_bundle, names_bundle))
    together = [json.loads(line) for line in open(registry / DECISIONS)][1:]
    assert sorted(d["current"] for d in together) == sorted([untrained, trained]), together
    assert read_json(registry / CURRENT)["version"] == trained


def test_a_second_scoring_run_into_the_same_output_is_refused_while_the_first_writes(datasets, names_bundle, tmp_path):
    """`score()` holds its output's lock for the whole run: a second run into the same output
    while the first is scoring is refused by name, never a second writer mixing partitions."""
    import subprocess
    import sys
    import time

    out = tmp_path / "scored"
    config = ScoreConfig(
        bundle=str(names_bundle),
        output=str(out),
        partition_rows=500,
        inputs=[InputSpec(path=str(datasets / "names"), label_column=None)],
    )
    script = (
        "import sys; from rnnlib.config import ScoreConfig; from rnnlib.scoring.pipeline import score\n"
        f"score(ScoreConfig.model_validate_json({config.model_dump_json()!r}))"
    )
    first = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("**/*.parquet")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # the first run has begun writing
    assert first.poll() is None, first.communicate()[1]
    with pytest.raises(InputError, match="another scoring run is writing this output"):
        score(config)
    assert first.wait(timeout=300) == 0, first.communicate()[1]
    assert score(config).already_complete  # the first run's output, whole
