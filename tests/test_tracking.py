"""Experiment tracking: a pipeline run on tiny data, read back from its MLflow store with MlflowClient."""

import json
from pathlib import Path

import pytest

from ray_recall.tracking import RUN_DIR_TAG, flatten, metric_name, resolve_uri
from tests.conftest import tiny_config


@pytest.fixture
def tracking_on(monkeypatch):
    monkeypatch.setenv("RAY_RECALL_TRACKING", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_pipeline_run_is_logged_with_params_epoch_history_test_metrics_and_artifacts(trained_run, tracking_on):
    """The shared run (conftest's trained_run) was tracked: its params, live epoch metrics, test metrics and
    artifacts are in the default store; running the same config again skips every stage and logs it all again."""
    from mlflow import MlflowClient

    from ray_recall.pipeline import run_pipeline

    cfg, out = trained_run
    root = Path(cfg.run_dir).parent
    # The default store: SQLite beside the run directory, artifacts in mlartifacts/ there too.
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_id == out["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.data.tags[RUN_DIR_TAG] == cfg.run_dir
    params = run.data.params
    assert params["train.epochs"] == str(cfg.train.epochs) and params["model.name"] == "dssm"
    assert json.loads(params["eval.ks"]) == [10, 20] and "tracking.uri" not in params
    # Per-epoch history: one point per epoch, the same values as the run's training.json.
    history = out["train"]["history"]
    for key in ("loss", "val_recall_at_10"):
        logged = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in logged] == [h["epoch"] for h in history]
        assert [m.value for m in logged] == pytest.approx([h[metric_name(key).replace("_at_", "@")] for h in history])
    # ... logged live by the rank-0 worker: before the best model was written after the fit.
    first_epoch = client.get_metric_history(run.info.run_id, "loss")[0].timestamp / 1000
    assert first_epoch < (Path(cfg.run_dir) / "model" / "model.pt").stat().st_mtime
    test = out["evaluate"]["metrics"]
    assert run.data.metrics["test_recall_at_10"] == pytest.approx(test["dssm"]["recall@10"])
    assert run.data.metrics["most_popular_test_ndcg_at_20"] == pytest.approx(test["most_popular"]["ndcg@20"])
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "training_curves.png"} <= files
    assert str(root / "mlartifacts") in run.info.artifact_uri
    # A second run of the same config skips every stage and still logs its results.
    lines = []
    again = run_pipeline(cfg, log=lines.append)
    assert any(again["mlflow_run_id"] in line for line in lines)
    rerun = client.get_run(again["mlflow_run_id"])
    assert rerun.data.metrics["test_recall_at_10"] == pytest.approx(test["dssm"]["recall@10"])
    assert len(client.get_metric_history(rerun.info.run_id, "loss")) == len(history)


def test_tracking_off_by_config_key_writes_no_store(ray_session, tmp_path, tracking_on):
    from ray_recall.tracking import tracked

    cfg = tiny_config(tmp_path / "runs" / "b", **{"tracking.enabled": False})
    with tracked(cfg.to_dict(), cfg.run_dir, cfg.run_dir, "x") as tracker:
        assert tracker is None
    assert not (tmp_path / "runs" / "mlflow.db").exists()


def test_uri_resolution_and_names(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri(None, str(tmp_path / "runs" / "x")) == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert resolve_uri("http://mlflow:5000", str(tmp_path)) == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_uri(None, str(tmp_path)) == "http://env:5000"
    assert metric_name("val_recall@10") == "val_recall_at_10"
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": "s"}) == {"a.b": "1", "a.c": "[1, 2]", "d": "null", "e": "s"}


def test_a_failing_trial_run_leaves_its_state_to_its_search(tmp_path):
    """A search's trial (a child run) that fails writes nothing: its search closes it once Tune has returned (a trial's
    process can end between any two writes). A run of its own fails as FAILED; success is FINISHED either way."""
    from ray_recall.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    search = Tracker.start(uri, "search", "search")
    trial, done = (Tracker.start(uri, "search", name, parent_run_id=search.run_id) for name in ("trial 1", "trial 2"))
    trial.finish(False)
    done.finish(True)
    assert trial.client.get_run(trial.run_id).info.status == "RUNNING"
    assert done.client.get_run(done.run_id).info.status == "FINISHED"
    # The search already closed the run: a late failure leaves it.
    trial.client.set_terminated(trial.run_id, status="KILLED")
    trial.finish(False)
    assert trial.client.get_run(trial.run_id).info.status == "KILLED"
    failed, ok = Tracker.start(uri, "search", "alone"), Tracker.start(uri, "search", "ok")
    failed.finish(False)
    ok.finish(True)
    assert failed.client.get_run(failed.run_id).info.status == "FAILED"
    assert ok.client.get_run(ok.run_id).info.status == "FINISHED"
