"""Quality: every model, in the training modes it is built for, beats most-popular on planted data.

The data stage runs once on Ray Data; training runs in-process (`fit_in_process`: the same batches
and loss as the Ray Train loop, without Ray) so the whole file stays well under two minutes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_recall.stages.preprocess import preprocess
from ray_recall.metrics import metrics_from_ranks
from ray_recall.models import available_models, get_model_class
from ray_recall.ranking import embed_all_items, rank_targets
from ray_recall.rundir import RunDir
from ray_recall.stages.train.local import fit_in_process
from tests.conftest import tiny_config

# The objective each model was introduced with, plus list-wise softmax where later work showed
# it to be the stronger choice (GRU4Rec's cross-entropy variant, SASRec in most follow-ups).
NATURAL_MODES = {
    "dssm": ("listwise", "pointwise"),
    "youtubednn": ("listwise",),
    "gru4rec": ("pairwise", "listwise"),
    "sasrec": ("pointwise", "listwise"),
    "hstu": ("listwise",),
    "mind": ("listwise",),
    "comirec": ("listwise",),
}
CASES = [(name, mode) for name in available_models() for mode in NATURAL_MODES.get(name, ())]
MARGIN = 1.1  # model recall@10 must exceed popularity's by this factor
K = 10

# Short training: 4 epochs of batch 64 (~250 steps on ~4k samples). Fewer, larger batches leave
# point-wise BCE on the popularity plateau it starts on. Causal models train on all positions: a batch
# is windows of up to max_len targets; 4 a step, for 10 epochs (BCE on all positions learns slowest)' steps.
TRAIN = {"train.epochs": 4, "train.batch_size": 64, "train.num_threads": 1}
CAUSAL_TRAIN = {"train.batch_size": 4, "train.epochs": 10}


@pytest.fixture(scope="module")
def prepared(ray_session, tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("quality") / "run")
    run = RunDir(cfg.run_dir)
    preprocess(cfg, run, log=lambda *_: None)
    schema = run.read_schema()
    splits = {}
    for split in ("val", "test"):
        df = run.read_split(split)
        splits[split] = {c: df[c].to_numpy().astype(np.int64) for c in ("user_idx", "pos", "target")}
    popularity = torch.tensor(run.read_items()["count"].to_numpy(), dtype=torch.float32)  # [num_items], column j = item j + 1
    return cfg, run, run.read_sequences(schema.num_users), schema.max_len, splits, popularity


def recall_at_k(model, prepared, split: str) -> tuple[float, float]:
    """(model, most-popular) Recall@K on a split, exact full ranking with seen items masked (as the evaluate stage)."""
    _, _, seqs, max_len, splits, popularity = prepared
    s = splits[split]
    ranks = rank_targets(model, seqs, embed_all_items(model), s["user_idx"], s["pos"], s["target"], max_len,
                         extra_scores={"popularity": popularity})
    return (metrics_from_ranks(ranks["model"], [K])[f"recall@{K}"],
            metrics_from_ranks(ranks["popularity"], [K])[f"recall@{K}"])


def test_every_model_has_a_quality_case():
    assert set(available_models()) <= set(NATURAL_MODES), "add the new model's modes to NATURAL_MODES"


@pytest.mark.parametrize("name,mode", CASES)
def test_model_beats_most_popular(prepared, name, mode):
    cfg, run = prepared[:2]
    extra = CAUSAL_TRAIN if get_model_class(name).causal else {}
    cfg = cfg.replace(**{"model.name": name, "model.params": {}, "train.mode": mode, **TRAIN, **extra})  # the model's defaults
    model = fit_in_process(cfg, run)
    assert not model.training
    results = {split: recall_at_k(model, prepared, split) for split in ("val", "test")}
    print(f"\n[quality] {name:<11} {mode:<9} " + "  ".join(
        f"{split} recall@{K} {m:.3f} (popularity {p:.3f})" for split, (m, p) in results.items()))
    for split, (m, p) in results.items():
        assert m > MARGIN * p, f"{name}/{mode}: {split} recall@{K} {m:.3f} vs most-popular {p:.3f}"


@pytest.mark.parametrize("name", ["dssm", "sasrec"])
def test_shared_negatives_train_a_model_that_beats_most_popular(prepared, name):
    """One draw of negatives per step (train.shared_negatives), a user's own items masked: the whole path
    (chunk pools, batches cut from them, the masked loss) trains as well as per-row negatives do."""
    cfg, run = prepared[:2]
    extra = CAUSAL_TRAIN if get_model_class(name).causal else {}
    cfg = cfg.replace(**{"model.name": name, "model.params": {}, "train.mode": "listwise", **TRAIN, **extra,
                         "train.shared_negatives": True, "train.num_negatives": 64})
    model = fit_in_process(cfg, run)
    m, p = recall_at_k(model, prepared, "val")
    print(f"\n[quality] {name:<11} shared    val recall@{K} {m:.3f} (popularity {p:.3f})")
    assert m > MARGIN * p, f"{name}/shared negatives: val recall@{K} {m:.3f} vs most-popular {p:.3f}"
