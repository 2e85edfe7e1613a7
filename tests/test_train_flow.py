"""The train flow on a real Prefect server: bundle, metrics, plots, artifacts, cache hit."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path

import pytest
import torch
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from rnnlib.config import TrainFlowConfig
from rnnlib.modeling.bundle import load_bundle
from rnnlib.modeling.engines import available_engines
from rnnlib_flows.train import train_flow

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_train_flow_end_to_end_then_cached(datasets, tmp_path):
    config = TrainFlowConfig.model_validate(
        {
            "source": {"dataset": "names", "mirror": str(datasets)},
            "work_dir": str(tmp_path),
            "model": {"cell": "gru", "embedding_dim": 16, "hidden_size": 32},
            "train": {"epochs": 2, "batch_size": 64, "lr": 0.003},
        }
    )
    state = train_flow(config, return_state=True)
    first = state.result()
    assert not first.fit.cached and not first.evaluate.cached
    result = first.evaluation
    assert result.rows == 3008 and 0.5 < result.accuracy <= 1
    bundle_dir = Path(result.bundle)
    for name in (
        "weights.safetensors",
        "vocab.json",
        "labels.json",
        "config.json",
        "metrics.json",
        "README.md",
        "confusion.png",
        "curves.png",
    ):
        assert (bundle_dir / name).is_file(), name
    metrics = json.loads((bundle_dir / "metrics.json").read_text())
    assert set(metrics["per_class"]) == set(first.data.labels) and len(metrics["confusion_matrix"]) == 18
    assert sum(map(sum, metrics["confusion_matrix"])) == 3008
    # every scoring engine installed (ONNX Runtime's and OpenVINO's with the dev extras) against fp32
    # on test rows, and what `auto` picks here: in the metrics and the card
    engines = metrics["engines"]
    installed = available_engines(torch.device("cpu"))
    assert [t["engine"] for t in engines["trials"]] == installed and engines["rows"] == 2000
    assert engines["not_measured"] == {} and {"onnx", "openvino"} <= set(installed)
    assert all(t["labels_same"] >= 0.99 and t["max_probability_change"] < 0.05 for t in engines["trials"])
    auto = next(t for t in engines["trials"] if t["engine"] == engines["engine"])
    assert auto["labels_same"] >= 0.995 and engines["cpu"]
    card = (bundle_dir / "README.md").read_text()
    assert "## Scoring engines" in card and f"picks **{engines['engine']}**" in card
    assert "maximum length: none (texts are read whole)" in card
    assert load_bundle(bundle_dir).version == result.version
    _assert_dashboard(state.state_details.flow_run_id, first, metrics)

    second = train_flow(config)
    assert all(stage.cached for stage in second.stages)
    assert second.evaluation == result


def _assert_dashboard(flow_run_id, trained, metrics: dict) -> None:
    """What the run published, read back from the server's API: the data, the per-epoch history
    with the kept epoch marked, the model beside the baseline, per-class figures, the plots
    embedded, and task runs named by what they do."""
    with get_client(sync_client=True) as client:
        artifacts = {
            a.key: a.data
            for a in client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        }
        task_runs = {
            t.name for t in client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        }
    assert set(artifacts) == {
        "train-data",
        "training-history",
        "evaluation-metrics",
        "evaluation-summary",
        "per-class",
        "evaluation-plots",
    }
    assert f"kept 20074, rejected 0; vocabulary {trained.data.vocab_size} entries" in artifacts["train-data"]
    assert "| fit | built |" in artifacts["train-data"]
    history = json.loads(artifacts["training-history"])
    assert [row["epoch"] for row in history] == [1, 2]
    assert [row["epoch"] for row in history if row["kept"]] == [trained.best_epoch]
    per_class = {row["class"]: row for row in json.loads(artifacts["per-class"])}
    assert set(per_class) == set(metrics["per_class"])
    assert sum(row["test rows"] for row in per_class.values()) == 3008
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", artifacts["evaluation-plots"])
    assert len(images) == 2 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert {"ingest", "preprocess chars", "fit gru 1x32 seed 0", "baseline tf-idf char", "evaluate"} <= task_runs, (
        task_runs
    )
    assert not [name for name in task_runs if re.fullmatch(r".+-[0-9a-f]{3}", name)], task_runs  # none left to Prefect


def test_prune_during_a_run_removes_nothing_the_run_still_needs(datasets, tmp_path):
    """`rnnlib cache prune --older-than 0` while the train flow fits: every output the run has
    made or reused stays held until the run ends (evaluation reads the vocabulary and the split
    after the fit), so the run finishes; once it has ended they can be pruned."""
    import threading

    from rnnlib.stages import cached_outputs
    from rnnlib_flows.cli import main

    config = TrainFlowConfig.model_validate(
        {
            "source": {"dataset": "names", "mirror": str(datasets)},
            "work_dir": str(tmp_path / "w"),
            "model": {"cell": "gru", "embedding_dim": 16, "hidden_size": 32},
            "train": {"epochs": 3, "batch_size": 32},
            "evaluate": {"baseline": False, "graph_engines": False},
        }
    )
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["trained"] = train_flow(config)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            outcome["error"] = exc

    flow_run = threading.Thread(target=run)
    flow_run.start()
    deadline = time.monotonic() + 300
    fitting = lambda: list((tmp_path / "w").glob("fit/*.partial/last.pt"))  # noqa: E731
    while not fitting() and flow_run.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert flow_run.is_alive(), outcome  # the run is still fitting
    assert main(["cache", "prune", "--work-dir", str(tmp_path / "w"), "--older-than", "0"]) == 0
    flow_run.join()
    assert "error" not in outcome, outcome.get("error")
    trained = outcome["trained"]
    kept = {o.key for o in cached_outputs(tmp_path / "w")}
    assert {s.key for s in trained.data.stages} <= kept and trained.evaluate.key in kept
    assert main(["cache", "prune", "--work-dir", str(tmp_path / "w"), "--older-than", "0"]) == 0
    assert cached_outputs(tmp_path / "w") == []  # the run over, nothing holds them


REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(p.name for p in REPO_CONFIGS.glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_the_flow_runs_the_library_pipeline_of_every_recipe(recipe, tmp_path):
    """The flow runs the library's own driver (`train_on`), its stages as tasks: after a flow run
    of the recipe (its source swapped for small data), the library finds every stage cached
    under the keys the flow wrote, so the CLI's cache probe and the flow cannot disagree."""
    import yaml

    from rnnlib.modeling.pipeline import train_model
    from rnnlib.stages import reused

    words = ["good", "great", "fine", "bad", "awful", "poor", "plain", "odd", "movie", "plot", "actor", "scene"]
    (tmp_path / "small.csv").write_text(
        "text,label\n"
        + "".join(f"{words[i % 9]} {words[9 + i % 3]} {words[(i * 5) % 12]},{'abc'[i % 9 // 3]}\n" for i in range(240))
    )
    (tmp_path / "unlabelled.jsonl").write_text(
        "".join(f'{{"text": "{words[i % 12]} {words[(i * 7) % 12]}"}}\n' for i in range(60))
    )
    settings = yaml.safe_load((REPO_CONFIGS / recipe).read_text())
    unlabelled = [{"path": str(tmp_path / "unlabelled.jsonl")}] if settings["source"].get("unlabelled") else []
    settings["source"] = {"inputs": [{"path": str(tmp_path / "small.csv")}], "unlabelled": unlabelled}
    settings["train"] = {**settings.get("train", {}), "epochs": 1, "min_steps": 0}
    settings["pretrain"] = {**settings.get("pretrain", {}), "min_count": 1, "min_words": 0}
    settings.update(work_dir=str(tmp_path / "work"), dask={"processes": False})
    config = TrainFlowConfig.model_validate(settings)

    flown = train_flow(config)
    library = reused(lambda: train_model(config))
    assert library is not None, "the library would build a stage the flow did not"
    assert [(s.stage, s.key) for s in library.stages] == [(s.stage, s.key) for s in flown.stages]
