"""Exported towers: every registered model's ONNX towers on onnxruntime match its PyTorch towers."""

import json

import numpy as np
import pytest
import torch

from ray_recall import batch as B
from ray_recall.export import export_model, output_shape, probe_inputs
from ray_recall.models import available_models
from ray_recall.rundir import EXPORT_FILES
from tests.test_models import make_model

ort = pytest.importorskip("onnxruntime")
MODELS = available_models()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("with_time", [False, True], ids=["no-times", "times"])
def test_exported_towers_match_pytorch_at_two_batch_sizes(name, with_time):
    model = make_model(name, seed=3)
    files, info = export_model(model, with_time=with_time)
    model.eval()
    for side in ("user", "item"):
        session = ort.InferenceSession(files[side], providers=["CPUExecutionProvider"])
        described = info["towers"][side]
        assert [a["name"] for a in described["inputs"]] == [a.name for a in session.get_inputs()]
        for rows in (2, 33):
            inputs = probe_inputs(model, rows, with_time, seed=100 + rows)[side]
            with torch.no_grad():
                want = (model.encode_user if side == "user" else model.encode_item)(inputs).numpy()
            got = session.run(None, {a.name: inputs[a.name].numpy() for a in session.get_inputs()})[0]
            assert got.shape == want.shape == (rows, *output_shape(model, side)[1:])
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert info["model"] == name and json.loads(json.dumps(info)) == info  # export.json is plain JSON


def test_user_tower_reads_the_inputs_the_model_takes():
    """Non-sequence inputs are dropped by the tracer: DSSM's user tower reads the user id, SASRec's only the history."""
    inputs = {name: {a["name"] for a in export_model(make_model(name), with_time=True)[1]["towers"]["user"]["inputs"]}
              for name in ("dssm", "sasrec", "hstu")}
    assert B.USER in inputs["dssm"]
    assert B.USER not in inputs["sasrec"] and B.HIST in inputs["sasrec"]
    assert B.HIST_TIME in inputs["hstu"] and B.HIST_TIME not in inputs["sasrec"]


def test_multi_interest_user_tower_is_b_k_d():
    model = make_model("mind")
    files, info = export_model(model)
    assert info["towers"]["user"]["output"]["shape"] == ["batch", model.num_interests, model.embedding_dim]
    assert EXPORT_FILES["user"].endswith(".onnx")


def test_cli_export_of_a_trained_run_reproduces_its_item_embeddings(trained_run, tmp_path, capsys):
    """`ray-recall export` on a finished run: the files and export.json land in --out, and the item tower on
    onnxruntime gives the embeddings the embed stage wrote for the same items."""
    from ray_recall.cli import main
    from ray_recall.rundir import RunDir

    cfg, _ = trained_run
    out = tmp_path / "towers"
    assert main(["export", "--run-dir", str(cfg.run_dir), "--out", str(out)]) == 0
    assert "item_tower.onnx: item_id int64 [batch]" in capsys.readouterr().out
    info = json.loads((out / EXPORT_FILES["info"]).read_text())
    assert info["vocabularies"]["items"] == "data/items.parquet" and info["run_dir"].endswith("run")
    ids, want = RunDir(str(cfg.run_dir)).read_embeddings("items")
    session = ort.InferenceSession(str(out / EXPORT_FILES["item"]), providers=["CPUExecutionProvider"])
    got = session.run(None, {"item_id": ids.astype(np.int64)})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_export_of_an_untrained_run_names_the_missing_stage(tmp_path):
    from ray_recall.errors import RayRecallError
    from ray_recall.export import export_towers

    with pytest.raises(RayRecallError, match="train|preprocess"):
        export_towers(str(tmp_path / "empty"))
