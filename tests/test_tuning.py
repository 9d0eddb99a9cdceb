"""Hyperparameter search on Ray Tune: the space grammar, and one real 3-trial search whose best YAML is re-run."""

import os
from pathlib import Path

import pandas as pd
import pytest
from ray import tune

from ray_recall.config import PipelineConfig
from ray_recall.errors import ConfigError
from ray_recall.tuning import check_space, parse_space
from tests.conftest import tiny_config


def test_space_grammar():
    space = parse_space({"train.lr": "loguniform(1e-4, 1e-2)", "train": {"temperature": "choice([0.05, 0.1])"},
                         "model.params.hidden_units": [[32], [64]], "train.batch_size": 128,
                         "train.num_negatives": "randint(5, 20)", "train.epochs": "grid([2, 3])"})
    assert isinstance(space["train.lr"], tune.search.sample.Float)
    assert (space["train.lr"].lower, space["train.lr"].upper) == (1e-4, 1e-2)  # 1e-4 without a dot is a number
    assert space["train.temperature"].categories == [0.05, 0.1]  # nested mappings are dotted keys
    assert space["model.params.hidden_units"].categories == [[32], [64]]  # a list is a choice
    assert space["train.batch_size"] == 128  # a plain value is fixed
    assert space["train.epochs"] == {"grid_search": [2, 3]}


@pytest.mark.parametrize("raw, message", [
    ({"train.lr": "lognormal(1, 2)"}, "unknown distribution 'lognormal'"),
    ({"train.lr": "loguniform(0.1)"}, "loguniform() takes 2 argument(s), got 1"),
    ({"train.lr": "uniform(0.5, 0.1)"}, "the lower bound must be below the upper"),
    ({"train.lr": "loguniform(0, 1)"}, "needs positive bounds"),
    ({"train.lr": "uniform(a, b)"}, "takes numbers"),
    ({"run_dir": "choice(['a', 'b'])"}, "'run_dir' cannot be searched"),
    ({"train.lr": []}, "an empty list"),
    ({}, "non-empty mapping"),
])
def test_space_errors_name_the_key(raw, message):
    with pytest.raises(ConfigError) as e:
        parse_space(raw)
    assert message in str(e.value)


def test_every_value_is_checked_against_the_config(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    with pytest.raises(ConfigError) as e:
        check_space(cfg, parse_space({"train.temperature": "choice([0.1, -1.0])"}))
    assert "train.temperature=-1.0" in str(e.value)
    with pytest.raises(ConfigError) as e:
        check_space(cfg, parse_space({"train.learning_rate": "loguniform(1e-3, 1e-2)"}))
    assert "train.learning_rate" in str(e.value)
    with pytest.raises(ConfigError) as e:  # a model parameter its constructor does not take
        check_space(cfg, parse_space({"model.params.num_blocks": [1, 2]}))
    assert "num_blocks" in str(e.value)


def test_search_shares_the_data_tracks_trials_and_its_best_yaml_reproduces(ray_session, tmp_path, monkeypatch):
    """2 trials with ASHA on tiny data, one at a time: every trial adopts the base run's data stage (hard links),
    each is an MLflow child run of the search, and re-running the best YAML's train stage gives the best
    trial's validation metric at every epoch they share. (One at a time: on 2 cores two concurrent tiny
    trials take as long as two in a row, and the limit is as checkable at 1 as at 2.)"""
    from mlflow import MlflowClient

    from ray_recall.pipeline import run_stage
    from ray_recall.tuning import search

    monkeypatch.setenv("RAY_RECALL_TRACKING", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tiny_config(tmp_path / "base", **{"train.epochs": 3, "tracking.experiment": "search"})
    lines = []
    out = search(cfg, {"train.lr": "loguniform(2e-3, 2e-2)", "train.temperature": "choice([0.05, 0.2])"},
                 num_samples=2, max_concurrent=1, grace_period=1, out=str(tmp_path / "search"), seed=1,
                 log=lines.append)
    trials = out["trials"]
    assert len(trials) == 2 and all(t["value"] is not None for t in trials)
    assert out["most_running"] == 1  # max_concurrent held: the second waited for a place
    assert sum(t["status"] == "finished" for t in trials) >= 1  # the best goes on past ASHA's rungs
    csv = pd.read_csv(tmp_path / "search" / "trials.csv")
    assert sorted(csv["trial_id"]) == sorted(t["trial_id"] for t in trials)
    # One data stage, in the base run directory; each trial's data/ is the same files (hard links).
    base_meta = tmp_path / "base" / "data" / "meta.json"
    for t in trials:
        assert os.stat(Path(t["run_dir"]) / "data" / "meta.json").st_ino == os.stat(base_meta).st_ino
    # The console: a line per trial start and end, the table, the best; nothing of Tune's own.
    assert sum(line.startswith("[tune] trial") and "started" in line for line in lines) == 2
    assert any(line.startswith("[tune] best: trial " + out["best"]["trial_id"]) for line in lines)

    # MLflow: the search is a run, every trial a child with its per-epoch validation metric; none left RUNNING.
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("search")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and all(r.info.status in ("FINISHED", "KILLED") for r in children), \
        [(r.info.run_name, r.info.status) for r in children] + [(t["trial_id"], t["status"]) for t in trials]
    assert parent.data.metrics["best_val_recall_at_10"] == pytest.approx(out["best"]["value"])
    for child in children:
        assert client.get_metric_history(child.info.run_id, "val_recall_at_10")

    best = out["best"]
    best_cfg = PipelineConfig.from_yaml(out["best_config"])
    assert best_cfg.run_dir == cfg.run_dir
    assert best_cfg.train.lr == pytest.approx(best["params"]["train.lr"])
    again = run_stage(best_cfg, "train", log=lambda *_: None)
    metric = cfg.train.selection_metric
    reproduced = [h[metric] for h in again["history"]]
    trial_history = _trial_history(best["run_dir"], metric)
    n = min(len(reproduced), len(trial_history))
    assert n == best["epochs"] and reproduced[:n] == pytest.approx(trial_history[:n], abs=1e-9)
    assert max(reproduced) >= best["value"] - 1e-9


def _trial_history(run_dir: str, metric: str) -> list[float]:
    from ray_recall.rundir import RunDir

    run = RunDir(run_dir)
    (name,) = run.subdirs("checkpoints")
    kept = run.checkpoints_by_epoch(name)
    return [h[metric] for h in run.read_checkpoint_history(name, max(kept))]


def test_shipped_search_spaces_fit_their_configs():
    """configs/search/<model>.yaml: every key and value valid for configs/ml100k_<model>.yaml."""
    import yaml

    root = Path(__file__).resolve().parent.parent / "configs"
    spaces = sorted((root / "search").glob("*.yaml"))
    assert spaces
    for path in spaces:
        cfg = PipelineConfig.from_yaml(str(root / f"ml100k_{path.stem}.yaml"))
        check_space(cfg, parse_space(yaml.safe_load(path.read_text())))


def test_trial_runs_end_in_the_state_their_trial_ended_in(tmp_path):
    """A search's child runs after Tune returns: whatever a trial's end left (RUNNING: its tracker writes nothing
    when it fails; FAILED: a tracker of an older version), a trial that wrote its model is FINISHED, one ASHA cut
    off is KILLED, and a trial Tune recorded as an error is FAILED."""
    from ray_recall.tracking import RUN_DIR_TAG, Tracker
    from ray_recall.tuning import _close_children

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = Tracker.start(uri, "search", "search")
    cases = {  # trial status -> the child's state before, the state wanted after
        "a": ("finished", "FAILED", "FINISHED"), "b": ("finished", "RUNNING", "FINISHED"),
        "c": ("finished", "FINISHED", "FINISHED"), "d": ("stopped by ASHA", "FAILED", "KILLED"),
        "e": ("stopped by ASHA", "RUNNING", "KILLED"), "f": ("error", "FAILED", "FAILED"),
        "g": ("error", "RUNNING", "FAILED"),
    }
    children = {}
    for name, (_, before, _) in cases.items():
        child = Tracker.start(uri, "search", name, tags={RUN_DIR_TAG: f"trials/{name}"}, parent_run_id=parent.run_id)
        if before != "RUNNING":
            child.client.set_terminated(child.run_id, status=before)
        children[name] = child.run_id
    _close_children(parent, [{"run_dir": f"trials/{n}", "status": status} for n, (status, _, _) in cases.items()])
    # A stopped trial's own way out comes after the search ended its run (seen in a clean-clone run): it stays KILLED.
    Tracker(uri, children["e"], parent.experiment_id).finish(ok=False)
    got = {n: parent.client.get_run(run_id).info.status for n, run_id in children.items()}
    assert got == {n: after for n, (_, _, after) in cases.items()}
    late = Tracker.start(uri, "search", "late")  # a run nobody ended still fails as before
    late.finish(ok=False)
    assert late.client.get_run(late.run_id).info.status == "FAILED"
