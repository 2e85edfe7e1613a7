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
from rnnlib.scoring.registry import DECISIONS, accuracy, held_out_rows, promote
from rnnlib.scoring.run import SCORES, output_dir_for, output_lock, score


@pytest.fixture(scope="module")
def untrained_bundle(names_bundle, names_data, tmp_path_factory) -> Path:
    """The same architecture and vocabulary as `names_bundle`, with random weights."""
    work = tmp_path_factory.mktemp("untrained")
    trained = load_bundle(names_bundle)
    torch.manual_seed(1)
    model = RNNClassifier(len(trained.vocab.tokens), len(trained.labels.labels), trained.model.cfg)
    torch.save(model.state_dict(), work / "weights.pt")
    save_bundle(work / "bundle", work / "weights.pt", Path(names_data.vocab.path), trained.preprocess,
                trained.model.cfg, None, {})
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
    manifest = score(ScoreConfig(bundle=str(registry), inputs=[InputSpec(path=str(tmp_path / "new.txt"))],
                                 output=str(out)))
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
