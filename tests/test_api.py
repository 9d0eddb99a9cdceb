"""The notebook API: model-zoo keywords, errors that name the fix, negatives, and the same numbers as the pipeline job."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch

from ray_recall.config import PipelineConfig
from ray_recall.data import generate_seq_features, negative_sample
from ray_recall.errors import ConfigError, DataError
from ray_recall.evaluate import evaluate_hit_rate, evaluate_model, evaluate_recall
from ray_recall.index import VectorIndex
from ray_recall.models import DSSM, GRU4Rec, MIND, ModelSpec, build_model
from ray_recall.train import MatchTrainer
from tests.test_models import NUM_ITEMS, tiny_schema

# ---- models built without data ------------------------------------------------------------


def test_models_take_model_zoo_keywords_and_bind_later():
    gru = GRU4Rec(item_num=NUM_ITEMS, hidden_size=64, num_layers=2, dropout_rate=0.1)
    mind = MIND(item_num=NUM_ITEMS + 5, num_interests=4, hidden_size=64, routing_iterations=3)
    dssm = DSSM(user_features=["taste"], item_features=["category", "tags"], hidden_units=[64, 32, 16],
                dropout_rates=[0.1, 0.1, 0.1])
    built = []
    for spec, cls in ((gru, GRU4Rec), (mind, MIND), (dssm, DSSM)):
        # Without data: an explicit spec (name + hyperparameters), no weights.
        assert isinstance(spec, ModelSpec) and not spec.is_bound and spec.model_class is cls
        assert not hasattr(spec, "state_dict")
        model = spec.bind(tiny_schema())
        assert isinstance(model, cls) and model.spec == spec
        assert model.num_items == NUM_ITEMS  # the table follows the data, whatever item_num said
        built.append(model)
    gru_m, mind_m, dssm_m = built
    assert gru_m.gru.num_layers == 2 and gru_m.gru.hidden_size == 64
    assert mind_m.num_interests == 4 and mind_m.routing_iterations == 3
    assert [m.out_features for m in dssm_m.user_tower if isinstance(m, torch.nn.Linear)] == [64, 32, 16, 64]
    assert gru.hyperparameters == {"item_num": NUM_ITEMS, "hidden_size": 64, "num_layers": 2, "dropout_rate": 0.1}
    assert repr(gru) == "ModelSpec('gru4rec', embedding_dim=64, item_num=40, hidden_size=64, num_layers=2, dropout_rate=0.1)"
    # Built at once when given a schema, keeping its spec; the registry path accepts item_num too.
    direct = GRU4Rec(tiny_schema(), 16, hidden_size=8)
    assert isinstance(direct, GRU4Rec) and direct.spec == GRU4Rec(embedding_dim=16, hidden_size=8)
    assert build_model("gru4rec", tiny_schema(), 16, {"item_num": NUM_ITEMS}).num_items == NUM_ITEMS
    with pytest.raises(TypeError, match=r"first argument is the data .* GRU4Rec\(embedding_dim=\.\.\.\) for a spec"):
        GRU4Rec(16)


def test_bound_model_weights_follow_the_seed_like_build_model():
    torch.manual_seed(3)
    bound_later = DSSM(embedding_dim=16, hidden_units=[8]).bind(tiny_schema())
    torch.manual_seed(3)
    built = build_model("dssm", tiny_schema(), 16, {"hidden_units": [8]})
    assert all(torch.equal(a, b) for a, b in zip(bound_later.state_dict().values(), built.state_dict().values()))


# ---- errors in the user's language --------------------------------------------------------


def test_errors_name_the_fix(monkeypatch):
    with pytest.raises(ConfigError, match=r"'agee' is not in the data's user features \['taste'\].*user_attribute_cols"):
        DSSM(user_features=["agee"]).bind(tiny_schema())
    with pytest.raises(ConfigError, match=r"item_num=10\) is smaller than the data's item count \(40 items.*item_num=data.num_items"):
        GRU4Rec(item_num=10).bind(tiny_schema())
    with pytest.raises(ConfigError, match=r"no parameter 'hidden_unit' \(did you mean 'hidden_units'\?\)"):
        DSSM(hidden_unit=[8])
    with pytest.raises(ConfigError, match=r"mode=3 is not a training mode; use 0 \(pointwise\), 1 \(pairwise\) or 2"):
        MatchTrainer(GRU4Rec(), mode=3)
    monkeypatch.setattr(GRU4Rec, "modes", ("pairwise", "listwise"))
    with pytest.raises(ConfigError, match=r"GRU4Rec cannot train in mode=0 \(pointwise\); it trains in mode 1 \(pairwise\), 2"):
        MatchTrainer(GRU4Rec(), mode=0)
    assert MatchTrainer(GRU4Rec(), mode="pairwise")._train["mode"] == "pairwise"
    with pytest.raises(ConfigError, match=r"no option 'epochs' \(MatchTrainer calls it 'n_epochs'\)"):
        MatchTrainer(DSSM(), epochs=3)
    with pytest.raises(ConfigError, match=r"no option 'lr' \(pass it as optimizer_params"):
        MatchTrainer(DSSM(), lr=0.1)
    with pytest.raises(ConfigError, match=r"optimizer_params=\{'momentum': \.\.\.\}.*\['lr', 'weight_decay'\]"):
        MatchTrainer(DSSM(), optimizer_params={"momentum": 0.9})
    with pytest.raises(ConfigError, match=r"train.temperature"):
        MatchTrainer(DSSM(), temperature=-1.0)


# ---- negatives ----------------------------------------------------------------------------


def test_negative_sample_draws_word2vec_style():
    counts = {"a": 1, "b": 16, "c": 0}
    draws = negative_sample(counts, ratio=9000, method_id=1, seed=0)
    assert draws.shape == (9000,) and set(draws) == {"a", "b"}  # count 0: never drawn by popularity
    assert abs(np.mean(draws == "b") - 8 / 9) < 0.02  # 16 ** 0.75 = 8 against 1 ** 0.75 = 1
    uniform = negative_sample(counts, ratio=9000, method_id=0, seed=0)
    assert abs(np.mean(uniform == "c") - 1 / 3) < 0.02
    assert np.array_equal(negative_sample({5: 3, 7: 1}, 4, 2, seed=1), negative_sample({5: 3, 7: 1}, 4, 2, seed=1))
    assert negative_sample(pd.Series({5: 3, 7: 1}), 3, seed=1).dtype.kind == "i"
    with pytest.raises(ConfigError, match="method_id=7"):
        negative_sample(counts, 5, method_id=7)


# ---- with data ----------------------------------------------------------------------------


def synthetic_log() -> pd.DataFrame:
    """The planted synthetic log as one table: interactions with the user's and the item's attributes inline."""
    from ray_recall.stages.preprocess.synthetic import generate

    t = generate(num_users=300, num_items=200, num_groups=5, mean_length=20, seed=7)
    return t["interactions"].merge(t["users"], on="user_id").merge(t["items"], on="item_id")


def test_generate_seq_features_checks_columns(ray_session, tmp_path):
    df = synthetic_log()
    with pytest.raises(ConfigError, match=r"item_col=\.\.\.\): 'item' is not a column of the data \(did you mean 'item_id'\?\)"):
        generate_seq_features(df, item_col="item", run_dir=tmp_path / "a")
    with pytest.raises(ConfigError, match=r"'categry' is not a column .*did you mean 'category'"):
        generate_seq_features(df, item_attribute_cols=["categry"], run_dir=tmp_path / "b")
    with pytest.raises(ConfigError, match=r"must be a list of column names, e.g. \['taste'\]"):
        generate_seq_features(df, user_attribute_cols="taste", run_dir=tmp_path / "c")
    # Bad values are named in this function's terms: the caller's DataFrame (not the copy staged from it) and its
    # arguments (not the config keys they become).
    bad = df.rename(columns={"timestamp": "ts"}).astype({"ts": "float64"})
    bad.loc[3, "ts"] = None
    with pytest.raises(DataError) as e:
        generate_seq_features(bad, time_col="ts", run_dir=tmp_path / "d", log=lambda *_: None)
    assert str(e.value) == "generate_seq_features(data=<DataFrame>): column 'ts' (time_col=) has missing values (1 in one block)"


def test_a_ray_dataset_is_staged_as_parquet(ray_session, tmp_path):
    import ray.data

    from ray_recall.notebook import _stage_input
    from ray_recall.rundir import RunDir

    df = synthetic_log()
    path = _stage_input(ray.data.from_pandas(df), ["user_id", "item_id", "timestamp", "taste"], RunDir(str(tmp_path)))
    back = pd.read_parquet(path).sort_values(["user_id", "timestamp", "item_id"]).reset_index(drop=True)
    want = df[["user_id", "item_id", "timestamp", "taste"]].sort_values(["user_id", "timestamp", "item_id"])
    pd.testing.assert_frame_equal(back, want.reset_index(drop=True), check_dtype=False)


@pytest.fixture
def ordered_batches(ray_session):
    """Ray Data hands Train workers their batches in a fixed order (collate threads can reorder them otherwise),
    so two fits of one config are bit-identical and the API can be compared with the job exactly."""
    from ray.data import DataContext

    opts = DataContext.get_current().execution_options
    before, opts.preserve_order = opts.preserve_order, True
    yield
    opts.preserve_order = before


DSSM_PARAMS = {"feature_dim": 16, "hidden_units": [64], "user_features": ["taste"], "item_features": ["category"]}


def test_the_api_gives_the_pipeline_jobs_numbers(ordered_batches, tmp_path):
    """run_pipeline on a table vs generate_seq_features + MatchTrainer + evaluate_* on the same rows, config and seed."""
    from ray_recall.notebook import SeqData
    from ray_recall.pipeline import run_pipeline
    from ray_recall.rundir import RunDir

    df = synthetic_log()
    df.to_parquet(tmp_path / "log.parquet")
    cfg = PipelineConfig.from_dict({
        "run_dir": str(tmp_path / "job"),
        "data": {"source": "table", "path": str(tmp_path / "log.parquet"), "user_feature_cols": ["taste"],
                 "item_feature_cols": ["category"], "title_col": "title", "max_len": 20, "num_partitions": 2},
        "model": {"name": "dssm", "embedding_dim": 32, "params": DSSM_PARAMS},
        "train": {"mode": "listwise", "epochs": 3, "batch_size": 256, "num_negatives": 10, "lr": 0.005,
                  "temperature": 0.1, "cpus_per_worker": 1.0},
        "eval": {"ks": [10, 20]},
    })
    job = run_pipeline(cfg, log=lambda *_: None)["evaluate"]["metrics"]["dssm"]

    data = generate_seq_features(df, user_attribute_cols=["taste"], item_attribute_cols=["category"], title_col="title",
                                 max_len=20, num_partitions=2, run_dir=tmp_path / "api", log=None)
    spec = DSSM(embedding_dim=32, **DSSM_PARAMS)
    # A spec is not a model: the vector and evaluation calls say what to do with it.
    with pytest.raises(ConfigError, match=r"is a spec, not a trained model: train it with MatchTrainer\(model, \.\.\.\)"):
        data.item_vectors(spec)
    with pytest.raises(ConfigError, match=r"is a spec, not a trained model"):
        evaluate_model(spec, data.test)
    with pytest.raises(DataError, match=r"built for 9 users, 40 items"):
        data.item_vectors(spec.bind(tiny_schema()))
    trainer = MatchTrainer(spec, mode=2, optimizer_params={"lr": 0.005}, n_epochs=3, temperature=0.1, batch_size=256,
                           num_negatives=10, num_workers=1, cpus_per_worker=1.0, log=None)
    model = trainer.fit(data.train, data.val)
    assert isinstance(model, DSSM) and trainer.model is model and not model.training and model.spec == spec
    # The same config, but for where the rows were read from.
    assert (trainer.config.model, trainer.config.train) == (cfg.model, cfg.train)
    assert trainer.config.data.model_copy(update={"path": cfg.data.path}) == cfg.data

    api = evaluate_model(model, data.test, ks=[10, 20])
    assert api == pytest.approx(job, abs=1e-9), (api, job)
    assert evaluate_recall(model, data.test, k=10) == api["recall@10"]
    assert evaluate_hit_rate(model, data.test, k=20) == api["hit_rate@20"]

    # The trained weights and the vectors are the job's too.
    job_run = RunDir(cfg.run_dir)
    job_state = job_run.read_model().state_dict
    assert all(torch.allclose(model.state_dict()[k], v, atol=1e-6) for k, v in job_state.items())
    _, item_vecs = job_run.read_embeddings("items")
    assert np.allclose(data.item_vectors(model), item_vecs, atol=1e-5)
    user_ids, user_vecs = job_run.read_embeddings("users")
    original = data.decode_users(user_ids[:5])
    assert np.allclose(data.user_vectors(model, original), user_vecs[:5], atol=1e-5)
    assert np.allclose(data.user_vector(model, user_id=original[0]), user_vecs[0], atol=1e-5)

    # Original ids at the edges; the index answers in them.
    assert set(data.item_ids.tolist()) == set(df["item_id"].tolist())
    index = VectorIndex(metric="ip").fit(data.item_vectors(model), ids=data.item_ids)
    ids, _ = index.query(data.user_vector(model, history=data.history(original[0])[:-1]), n=5)
    assert set(ids) <= set(df["item_id"].tolist())
    # A history that is the user's whole sequence gives the stored user vector (the same window, the same tower).
    assert np.allclose(data.user_vector(model, history=data.history(original[0]), user_id=original[0]), user_vecs[0],
                       atol=1e-5)

    # state_dict round-trips into a model rebuilt in a "new session" on the reopened run directory.
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    reopened = SeqData(data.run_dir)
    fresh = DSSM(embedding_dim=32, **DSSM_PARAMS).bind(reopened)
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    assert evaluate_model(fresh, reopened.test, ks=[10, 20]) == api
