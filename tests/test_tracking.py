"""MLflow tracking against a real local store (SQLite): a retraining run is logged, and its
promoted bundle becomes a registered model version."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.usefixtures("prefect_server"), pytest.mark.slow]


def test_retraining_is_logged_and_the_promoted_model_registered(datasets, tmp_path):
    from mlflow import MlflowClient

    from rnnlib_flows.retrain import retrain_flow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    decision = retrain_flow(
        dataset="names",
        registry=str(tmp_path / "models"),
        overrides=[
            f"source.mirror={datasets}",
            f"work_dir={tmp_path / 'work'}",
            "dask.processes=false",
            "model.embedding_dim=16",
            "model.hidden_size=32",
            "train.epochs=2",
            "evaluate.graph_engines=false",
            f"tracking.uri={uri}",
        ],
    )
    assert decision.promoted
    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("rnnlib").experiment_id])
    assert run.data.params["model.hidden_size"] == "32" and run.data.params["source.dataset"] == "names"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2]
    assert 0 < run.data.metrics["test_accuracy"] <= 1 and "baseline_accuracy" in run.data.metrics
    assert run.data.tags["bundle_version"] == decision.candidate
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "bundle")}
    assert {"bundle/weights.safetensors", "bundle/README.md", "bundle/metrics.json"} <= logged
    [version] = client.search_model_versions("name='rnnlib'")
    assert version.run_id == run.info.run_id and version.tags["bundle_version"] == decision.candidate
    assert (tmp_path / "mlflow-artifacts").is_dir()  # beside the database, not in the working directory
