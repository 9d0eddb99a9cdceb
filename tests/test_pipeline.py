"""The whole pipeline on planted synthetic data: every stage real (Ray Data, Ray Train DDP, actors, FAISS)."""

import json
import shutil

import numpy as np
import pytest
from ray_recall.errors import ConfigError, DataError
from ray_recall.pipeline import run_pipeline, run_stage
from ray_recall.rundir import STAGES
from ray_recall.rundir import RunDir
from tests.conftest import tiny_config


def test_pipeline_outputs_and_quality(trained_run):
    cfg, out = trained_run
    run = RunDir(cfg.run_dir)
    manifest = run.manifest()
    assert set(manifest["stages"]) == set(STAGES)
    metrics = json.loads(open(run.path("metrics.json")).read())
    assert metrics["num_users"] == run.read_meta()["num_sequence_users"]
    model, pop = metrics["metrics"]["dssm"], metrics["metrics"]["most_popular"]
    for k in (10, 20):
        for name in ("recall", "hit_rate", "ndcg", "mrr"):
            assert 0.0 <= model[f"{name}@{k}"] <= 1.0
    # The planted taste groups are learnable: the model must clearly beat popularity.
    assert model["recall@10"] > 1.2 * pop["recall@10"], (model, pop)
    history = out["train"]["history"]
    assert len(history) == cfg.train.epochs
    assert history[-1]["loss"] < history[0]["loss"]
    # Embeddings cover every item and every kept user, with the configured dimension.
    item_ids, item_vecs = run.read_embeddings("items")
    user_ids, user_vecs = run.read_embeddings("users")
    assert item_ids.tolist() == list(range(1, run.read_meta()["num_items"] + 1))
    assert item_vecs.shape[1] == user_vecs.shape[1] == cfg.model.embedding_dim
    assert len(user_ids) == run.read_meta()["num_sequence_users"]
    assert np.isfinite(item_vecs).all() and np.isfinite(user_vecs).all()


def test_rerun_skips_finished_stages(trained_run):
    cfg, _ = trained_run
    lines = []
    run_pipeline(cfg, log=lines.append)
    assert len(lines) == len(STAGES) and all("up to date" in line for line in lines), lines


def test_small_runs_embed_and_evaluate_in_process_as_ray_data_does(trained_run, tmp_path):
    """compute.in_process_max_users: the embed and evaluate stages of a small run run their own Embedder and
    Evaluator in the driver; on Ray Data's actors (the path of any large run) they give the same vectors and metrics."""
    base, _ = trained_run
    shutil.copytree(base.run_dir, tmp_path / "run")
    cfg = base.replace(run_dir=str(tmp_path / "run"), **{"compute.in_process_max_users": 0})
    lines = []
    run_stage(cfg, "embed", force=True, log=lines.append)
    run_stage(cfg, "evaluate", force=True, log=lines.append)
    assert not any("in this process" in line for line in lines), lines
    ours, theirs = RunDir(base.run_dir), RunDir(cfg.run_dir)
    for side in ("items", "users"):
        (a_ids, a), (b_ids, b) = ours.read_embeddings(side), theirs.read_embeddings(side)
        assert a_ids.tolist() == b_ids.tolist()
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert len(theirs.files("embeddings", "items", suffix=".parquet")) >= 1
    a, b = ours.read_metrics()["metrics"], theirs.read_metrics()["metrics"]
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == pytest.approx(b[name], abs=1e-9), name
    lines = []
    small = base.replace(run_dir=str(tmp_path / "run"))
    run_stage(small, "embed", force=True, log=lines.append)
    assert "in this process: a small run" in lines[-1]


def test_failed_stage_leaves_previous_outputs(trained_run, tmp_path):
    base, _ = trained_run
    shutil.copytree(base.run_dir, tmp_path / "run")
    run = RunDir(str(tmp_path / "run"))
    before = {p: open(run.path(*p.split("/")), "rb").read() for p in ("data/meta.json", "model/model.pt", "metrics.json")}
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("user_id,item_id,timestamp\n1,2,soon\n1,3,4\n1,4,5\n")
    cfg = base.replace(run_dir=run.uri, **{"data.source": "table", "data.path": str(bad_csv)})
    with pytest.raises(DataError, match=r"column 'timestamp' \(data.time_col\) holds 'soon', which is neither a number"):
        run_stage(cfg, "preprocess", log=lambda *_: None)
    after = {p: open(run.path(*p.split("/")), "rb").read() for p in before}
    assert after == before
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".tmp-")]


def test_stages_need_their_inputs(ray_session, tmp_path):
    cfg = tiny_config(tmp_path / "empty_run")
    with pytest.raises(DataError, match="run the preprocess stage first"):
        run_stage(cfg, "train", log=lambda *_: None)
    with pytest.raises(ConfigError, match="unknown stage"):
        run_stage(cfg, "deploy", log=lambda *_: None)


def test_the_kept_weights_are_the_best_kept_epoch_earliest_of_equals():
    """Ray Train keeps the best few checkpoints but, among equal validation figures, may drop the first epoch
    with the best one: the stage then takes the earliest kept epoch with that figure, not a missing one."""
    from ray_recall.stages.train.stage import best_kept_epoch

    history = [{"epoch": e, "v": v} for e, v in enumerate([0.1, 0.3, 0.2, 0.3, 0.3])]
    assert best_kept_epoch(history, {1: "a", 3: "b", 4: "c"}, "v")["epoch"] == 1
    assert best_kept_epoch(history, {2: "a", 3: "b", 4: "c"}, "v")["epoch"] == 3  # epoch 1's checkpoint is gone
    assert best_kept_epoch(history, {0: "a", 2: "b"}, "v")["epoch"] == 2
    with pytest.raises(RuntimeError, match="no checkpoint"):
        best_kept_epoch(history, {}, "v")
