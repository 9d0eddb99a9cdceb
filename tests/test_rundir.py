"""The run directory's readers: untrusted files are refused, layouts are checked, samples are stable."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
import torch

from ray_recall.errors import DataError
from ray_recall.rundir import ModelFile, RunDir, sample_users, tensor_bytes, user_partition


class _RunsCode:
    """Unpickling this runs a shell command (what a tampered model file would do)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch.save", "raw pickle"])
def test_a_model_file_that_would_run_code_is_refused(tmp_path, how):
    run = RunDir(str(tmp_path / "run"))
    marker = tmp_path / "ran"
    evil = {"name": "dssm", "embedding_dim": 8, "params": {}, "state_dict": {"w": _RunsCode(str(marker))}}
    if how == "torch.save":
        buf = io.BytesIO()
        torch.save(evil, buf)
        data = buf.getvalue()
    else:
        data = pickle.dumps(evil)
    run.write_bytes(data, "model", "model.pt")
    with pytest.raises(DataError, match=r"model/model.pt: refused to load: it is not a plain tensor file"):
        run.read_model()
    assert not marker.exists(), "unpickling the model file ran code"


def test_a_plain_model_file_round_trips(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    run.write_bytes(tensor_bytes(ModelFile("dssm", 8, {"hidden_units": [4], "feature_dim": 2}, state).to_dict()),
                    "model", "model.pt")
    back = run.read_model()
    assert back.name == "dssm" and back.params == {"hidden_units": [4], "feature_dim": 2}
    assert torch.equal(back.state_dict["w"], state["w"])


def test_a_truncated_model_file_is_a_clear_error(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    data = tensor_bytes(ModelFile("dssm", 8, {}, {"w": torch.ones(100)}).to_dict())
    run.write_bytes(data[: len(data) // 2], "model", "model.pt")
    with pytest.raises(DataError, match="model/model.pt: refused to load"):
        run.read_model()


def test_user_partitions_and_samples_are_stable_and_even():
    users = np.arange(1, 200_001)
    parts = user_partition(users, 8)
    assert np.array_equal(parts, user_partition(users.copy(), 8))  # a function of the id alone
    counts = np.bincount(parts, minlength=8)
    assert counts.min() > 0.95 * counts.mean()  # even
    keep = sample_users(users, 0.1, seed=3)
    assert abs(keep.mean() - 0.1) < 0.005
    assert np.array_equal(keep[:1000], sample_users(users[:1000], 0.1, seed=3))  # the same whatever the batch
    assert not np.array_equal(keep, sample_users(users, 0.1, seed=4))
    assert sample_users(users[:10], 1.0).all()


def test_altered_or_truncated_stage_outputs_are_named_before_use(trained_run, tmp_path):
    """The manifest holds every stage output's size and SHA-256: a later stage and Serve check what they read."""
    import shutil

    from ray_recall.pipeline import run_stage
    from ray_recall.serve.recaller import Recaller

    base, _ = trained_run
    manifest = RunDir(base.run_dir).manifest()["stages"]
    assert {"data/meta.json", "model/model.pt", "index/meta.json"} <= {
        p for s in ("preprocess", "train", "index") for p in manifest[s]["files"]}
    for damage, expect in (("truncate", "truncated or altered"), ("flip", "SHA-256 mismatch"), ("delete", "is missing")):
        root = tmp_path / damage
        shutil.copytree(base.run_dir, root)
        run = RunDir(str(root))
        Recaller(str(root))  # intact: loads
        target = sorted((root / "embeddings" / "items").glob("*.parquet"))[0]
        data = target.read_bytes()
        if damage == "truncate":
            target.write_bytes(data[:-10])
        elif damage == "flip":
            target.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
        else:
            target.unlink()
        rel = str(target.relative_to(root))
        with pytest.raises(DataError, match=rf"{rel}.*{expect}.*re-run the embed stage"):
            Recaller(str(root))
        cfg = base.replace(run_dir=str(root))
        with pytest.raises(DataError, match=rf"{rel}.*{expect}"):
            run_stage(cfg, "index", force=True, log=lambda *_: None)
        assert run.read_json("index", "meta.json") == RunDir(base.run_dir).read_json("index", "meta.json")  # kept


def test_read_embeddings_first_n_are_the_lowest_ids_of_the_whole(trained_run):
    cfg, _ = trained_run
    run = RunDir(cfg.run_dir)
    ids, vecs = run.read_embeddings("users")
    assert np.all(np.diff(ids) > 0)
    few_ids, few = run.read_embeddings("users", first=5)
    assert np.array_equal(few_ids, ids[:5]) and np.array_equal(few, vecs[:5])
