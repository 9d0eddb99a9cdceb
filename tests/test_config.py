"""Config validation: unknown keys, wrong types and impossible values fail before any work, naming the key."""

import os

import pytest

from ray_recall.config import PipelineConfig, TrainConfig, reference_markdown
from ray_recall.errors import ConfigError
from ray_recall.pipeline import check_config

CONFIG_DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "config.md")


def test_defaults_and_yaml_round_trip(tmp_path):
    cfg = PipelineConfig()
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert PipelineConfig.from_yaml(str(path)) == cfg


@pytest.mark.parametrize("raw, needle", [
    ({"trian": {}}, "unknown config key trian"),
    ({"train": {"epoch": 3}}, "unknown config key train.epoch"),
    ({"train": {"epochs": "three"}}, "train.epochs must be an integer"),
    ({"train": {"epochs": 0}}, "train.epochs=0 must be > 0"),
    ({"train": {"mode": "softmax"}}, "train.mode='softmax' is not allowed"),
    ({"train": {"mode": 7}}, "train.mode=7 is not allowed"),
    ({"train": {"sampler": "zipf"}}, "train.sampler='zipf' is not allowed"),
    ({"model": {"name": "bert4rec"}}, "model.name='bert4rec' is unknown"),
    ({"data": {"source": "hive"}}, "data.source='hive' is not allowed"),
    ({"data": {"source": "table"}}, "data.path is required"),
    ({"data": {"min_user_interactions": 2}}, "data.min_user_interactions=2 must be >= 3"),
    ({"data": {"duplicates": "keep"}}, "data.duplicates='keep' is not allowed; choose one of ['drop', 'error']"),
    ({"eval": {"ks": [10, -5]}}, "eval.ks contains -5"),
    ({"index": {"metric": "manhattan"}}, "index.metric='manhattan' is not allowed"),
    ({"train": {"num_negatives": 0}}, "needs train.in_batch_negatives"),
])
def test_bad_values_name_the_key(raw, needle):
    """Every entry point validates a config with check_config before any stage runs (the model section
    against the registry and the model's constructor, which the config module itself does not know)."""
    with pytest.raises(ConfigError, match=None) as e:
        check_config(PipelineConfig.from_dict(raw))
    assert needle in str(e.value)


def test_unknown_model_lists_choices():
    with pytest.raises(ConfigError) as e:
        check_config(PipelineConfig.from_dict({"model": {"name": "nope"}}))
    assert "dssm" in str(e.value)


@pytest.mark.parametrize("params, needle", [
    ({"hidden_unit": [8]}, "no parameter 'hidden_unit' (did you mean 'hidden_units'?)"),
    ({"user_features": ["agee"]}, "'agee' is not in the data's user features ['age', 'gender', 'occupation']"),
    ({"activation": "swish"}, "activation='swish' is unknown"),
])
def test_model_params_are_checked_against_the_constructor_and_the_data(params, needle):
    cfg = PipelineConfig.from_dict({"model": {"name": "dssm", "params": params}})  # the bundled MovieLens' features
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    assert needle in str(e.value) and "model.params" in str(e.value)


def test_sasrec_heads_are_checked_before_any_stage():
    cfg = PipelineConfig.from_dict({"model": {"name": "sasrec", "embedding_dim": 30, "params": {"num_heads": 4}}})
    with pytest.raises(ConfigError, match="num_heads=4 must be positive and divide embedding_dim=30"):
        check_config(cfg)


def test_sections_built_directly_raise_config_errors():
    with pytest.raises(ConfigError, match=r"train.epochs must be an integer, got '3'"):
        TrainConfig(epochs="3")
    with pytest.raises(ConfigError, match=r"train.lr must be a number, got True"):
        TrainConfig(lr=True)
    with pytest.raises(ConfigError, match=r"unknown config key train.epoch; allowed keys here: \['batch_size'"):
        TrainConfig(epoch=3)
    with pytest.raises(ConfigError, match="power-of-two train.num_workers, got 3"):
        TrainConfig(grad_sync="exchange", num_workers=3)


def test_several_problems_are_all_named():
    with pytest.raises(ConfigError) as e:
        PipelineConfig.from_dict({"train": {"epochs": 0, "lr": "fast"}, "index": {"metric": "dot"}})
    for needle in ("train.epochs=0 must be > 0", "train.lr must be a number", "index.metric='dot' is not allowed"):
        assert needle in str(e.value)


def test_the_config_reference_is_current():
    with open(CONFIG_DOC) as f:
        assert f.read() == reference_markdown(), "docs/config.md is stale: python -m ray_recall.config > docs/config.md"
    for key in ("`grad_sync`", "`in_process_max_rows`", "`synthetic`", "`embed_actors`", "`ks`"):
        assert key in reference_markdown()


@pytest.mark.parametrize("alias, mode", [(0, "pointwise"), (1, "pairwise"), (2, "listwise")])
def test_mode_aliases(alias, mode):
    assert PipelineConfig.from_dict({"train": {"mode": alias}}).train.mode == mode


@pytest.mark.parametrize("alias, name", [(0, "uniform"), (1, "word2vec"), (2, "log_popularity")])
def test_sampler_aliases(alias, name):
    assert PipelineConfig.from_dict({"train": {"sampler": alias}}).train.sampler == name


def test_replace_and_hash():
    cfg = PipelineConfig()
    other = cfg.replace(**{"train.epochs": 3})
    assert other.train.epochs == 3 and cfg.train.epochs != 3
    assert cfg.section_hash("data") == other.section_hash("data")
    assert cfg.section_hash("train") != other.section_hash("train")
    with pytest.raises(ConfigError, match="unknown config key train.epochz"):
        cfg.replace(**{"train.epochz": 3})


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        PipelineConfig.from_yaml(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        PipelineConfig.from_yaml(str(bad))
