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


def test_two_workers_train_with_ddp(trained_run, tmp_path):
    """2 DDP workers on a copy of the preprocessed run: training finishes, the loss falls, quality holds."""
    base, _ = trained_run
    shutil.copytree(RunDir(base.run_dir).path("data"), tmp_path / "run" / "data")
    cfg = base.replace(run_dir=str(tmp_path / "run"), **{"train.num_workers": 2, "train.cpus_per_worker": 0.5})
    summary = run_stage(cfg, "train", log=lambda *_: None)
    assert summary["num_workers"] == 2
    hist = summary["history"]
    assert hist[-1]["loss"] < hist[0]["loss"]
    # Both workers' samples are counted: one epoch still covers every training sample.
    assert hist[0]["samples"] == RunDir(cfg.run_dir).read_meta()["samples"]["train"]
    assert summary["val_recall@10"] > 0.0
    assert RunDir(cfg.run_dir).exists("model", "model.pt")


def test_failed_stage_leaves_previous_outputs(trained_run, tmp_path):
    base, _ = trained_run
    shutil.copytree(base.run_dir, tmp_path / "run")
    run = RunDir(str(tmp_path / "run"))
    before = {p: open(run.path(*p.split("/")), "rb").read() for p in ("data/meta.json", "model/model.pt", "metrics.json")}
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("user_id,item_id,timestamp\n1,2,soon\n1,3,4\n1,4,5\n")
    cfg = base.replace(run_dir=run.uri, **{"data.source": "table", "data.path": str(bad_csv)})
    with pytest.raises(DataError, match="not numeric"):
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
