"""Every registered model against the `RecallModel` contract: shapes, padding invariance, gradients, state dicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ray_recall import batch as B
from ray_recall.config import MODES
from ray_recall.schema import DataSchema
from ray_recall.metrics import score_items
from ray_recall.models import available_models, build_model, get_model_class
from ray_recall.models.layers import Dropout, dropout, length_mask
from ray_recall.models.mind import MIND, dynamic_interest_count
from ray_recall.models.sasrec import attention_with_dropout
from ray_recall.objectives import listwise_loss

D = 16
NUM_USERS, NUM_ITEMS, MAX_LEN = 9, 40, 8
HIST_LENS = [8, 3, 1, 5, 2, 0]  # a full window, short ones and an empty history (a brand-new user at serving time)


def tiny_schema() -> DataSchema:
    rng = np.random.default_rng(0)
    taste = rng.integers(1, 4, NUM_USERS + 1)
    category = rng.integers(1, 5, NUM_ITEMS + 1)
    tags = rng.integers(0, 6, (NUM_ITEMS + 1, 3))  # multi-valued, 0 = no tag
    taste[0], category[0], tags[0] = 0, 0, 0
    return DataSchema(num_users=NUM_USERS, num_items=NUM_ITEMS, max_len=MAX_LEN, user_features={"taste": taste},
                      item_features={"category": category, "tags": tags},
                      cardinality={"taste": 3, "category": 4, "tags": 5})


def make_model(name: str, seed: int = 0, **params):
    torch.manual_seed(seed)
    return build_model(name, tiny_schema(), D, params)


def user_batch(seed: int = 0, hist_lens=HIST_LENS) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = len(hist_lens)
    hist_len = torch.tensor(hist_lens)
    hist = torch.randint(1, NUM_ITEMS + 1, (n, MAX_LEN), generator=g)
    hist = hist * length_mask(hist_len, MAX_LEN)  # right-padded with 0, as the data stage writes it
    return {B.USER: torch.randint(1, NUM_USERS + 1, (n,), generator=g), B.HIST: hist, B.HIST_LEN: hist_len}


def train_batch(num_neg: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    batch = user_batch(seed, hist_lens=[8, 3, 1, 5, 2])  # training samples always have at least one item of history
    g = torch.Generator().manual_seed(seed + 1)
    n = len(batch[B.USER])
    batch[B.POS] = torch.randint(1, NUM_ITEMS + 1, (n,), generator=g)
    batch[B.NEG] = torch.randint(1, NUM_ITEMS + 1, (n, num_neg), generator=g)
    return batch


def towers(model, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """forward on a per-prefix batch -> (user [B, D], pos [B, D], neg [B, N, D])."""
    out = model(batch)
    assert out["user"].shape[1] == 1 and out["pos"].shape[1] == 1  # one target per row
    return out["user"][:, 0], out["pos"][:, 0], out["neg"]


def expected_user_shape(model, n: int) -> tuple[int, ...]:
    return (n, model.num_interests, D) if model.multi_interest else (n, D)


ALL = available_models()


def test_the_seven_models_are_registered():
    assert {"dssm", "youtubednn", "gru4rec", "sasrec", "mind", "comirec", "hstu"} <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_class_declares_modes_and_documents_itself(name):
    cls = get_model_class(name)
    assert cls.modes and set(cls.modes) <= set(MODES)
    assert cls.__doc__ and "Args" in cls.__doc__
    if cls.multi_interest:
        assert make_model(name).num_interests >= 1


@pytest.mark.parametrize("name", ALL)
def test_encode_shapes(name):
    model = make_model(name).eval()
    batch = user_batch()
    with torch.no_grad():
        user = model.encode_user(batch)
        items_1d = model.encode_item({B.ITEM: torch.arange(1, 8)})
        items_2d = model.encode_item({B.ITEM: torch.randint(1, NUM_ITEMS + 1, (3, 4))})
    assert user.shape == expected_user_shape(model, len(HIST_LENS))
    assert items_1d.shape == (7, D)
    assert items_2d.shape == (3, 4, D)
    assert torch.isfinite(user).all() and torch.isfinite(items_2d).all()


@pytest.mark.parametrize("name", ALL)
def test_forward_returns_one_user_vector_per_row(name):
    model = make_model(name).train()
    batch = train_batch(num_neg=6)
    user, pos, neg = towers(model, batch)
    assert user.shape == (5, D) and pos.shape == (5, D) and neg.shape == (5, 6, D)
    # The item side in forward is exactly encode_item (same tower, same ids).
    model.eval()
    _, pos_eval, neg_eval = towers(model, batch)
    torch.testing.assert_close(pos_eval, model.encode_item({B.ITEM: batch[B.POS]}))
    torch.testing.assert_close(neg_eval, model.encode_item({B.ITEM: batch[B.NEG]}))


@pytest.mark.parametrize("name", ALL)
def test_padding_never_changes_the_user_vector(name):
    model = make_model(name).eval()
    batch = user_batch(seed=3)
    padded = ~length_mask(batch[B.HIST_LEN], MAX_LEN)
    noisy = dict(batch)
    noisy[B.HIST] = torch.where(padded, torch.randint(1, NUM_ITEMS + 1, padded.shape, generator=torch.Generator().manual_seed(9)),
                                batch[B.HIST])
    assert not torch.equal(noisy[B.HIST], batch[B.HIST])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_user(noisy), model.encode_user(batch), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_the_padding_width_never_changes_the_user_vector(name):
    """A history padded to its batch's longest (as a history query is) gives the vector of the max_len window."""
    model = make_model(name).eval()
    lens = [5, 3, 1, 0]
    batch = user_batch(seed=5, hist_lens=lens)
    narrow = dict(batch, **{B.HIST: batch[B.HIST][:, :max(lens)]})
    with torch.no_grad():
        torch.testing.assert_close(model.encode_user(narrow), model.encode_user(batch), rtol=0, atol=1e-6)
    histories = [h[:n].numpy() for h, n in zip(batch[B.HIST], lens)]
    built = B.pad_histories(histories, MAX_LEN, users=batch[B.USER].numpy())
    assert built[B.HIST].shape == (len(lens), max(lens))
    assert all(torch.equal(built[k], narrow[k]) for k in (B.USER, B.HIST, B.HIST_LEN))


@pytest.mark.parametrize("name", ALL)
def test_real_history_items_do_change_the_user_vector(name):
    model = make_model(name).eval()
    batch = user_batch(seed=4)
    changed = dict(batch)
    hist = batch[B.HIST].clone()
    hist[0, MAX_LEN - 1] = hist[0, MAX_LEN - 1] % NUM_ITEMS + 1  # row 0 is full: its last item is real
    changed[B.HIST] = hist
    with torch.no_grad():
        a, b = model.encode_user(batch), model.encode_user(changed)
    assert not torch.allclose(a[0], b[0])
    torch.testing.assert_close(a[1:], b[1:])


@pytest.mark.parametrize("name", ALL)
def test_backward_gives_finite_gradients(name):
    model = make_model(name).train()
    batch = train_batch()
    user, pos, neg = towers(model, batch)
    listwise_loss(user, pos, neg, temperature=0.1).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads, "no parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", ALL)
def test_empty_history_is_finite_in_training(name):
    model = make_model(name).train()
    batch = train_batch()
    batch[B.HIST_LEN] = torch.tensor([0, 3, 1, 0, 2])
    batch[B.HIST] = batch[B.HIST] * length_mask(batch[B.HIST_LEN], MAX_LEN)
    user, pos, neg = towers(model, batch)
    listwise_loss(user, pos, neg, temperature=0.1).backward()
    assert torch.isfinite(user).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trips_into_a_fresh_model(name):
    trained = make_model(name, seed=0)
    # One optimizer step so the weights differ from any fresh initialization.
    user, pos, neg = towers(trained, train_batch())
    listwise_loss(user, pos, neg, temperature=0.1).backward()
    torch.optim.SGD(trained.parameters(), lr=0.5).step()
    fresh = make_model(name, seed=1)
    fresh.load_state_dict(trained.state_dict())
    trained.eval(), fresh.eval()
    batch = user_batch(seed=5)
    items = {B.ITEM: torch.arange(1, NUM_ITEMS + 1)}
    with torch.no_grad():
        assert torch.equal(fresh.encode_user(batch), trained.encode_user(batch))
        assert torch.equal(fresh.encode_item(items), trained.encode_item(items))


@pytest.mark.parametrize("name", ALL)
def test_eval_mode_is_deterministic(name):
    model = make_model(name).eval()
    batch = user_batch(seed=6)
    with torch.no_grad():
        assert torch.equal(model.encode_user(batch), model.encode_user(batch))


# ---- MIND ---------------------------------------------------------------------------------


def test_mind_dynamic_interest_count_follows_log2_rule():
    lengths = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 100, 1024]
    for K in (1, 2, 3, 4, 6):
        got = dynamic_interest_count(torch.tensor(lengths), K).tolist()
        want = [max(1, min(K, math.floor(math.log2(n)))) if n > 0 else 1 for n in lengths]
        assert got == want, K


def test_mind_dynamic_interests_copy_the_first_interest():
    K = 4
    model = make_model("mind", num_interests=K, dynamic_interests=True).eval()
    batch = user_batch(seed=7, hist_lens=[8, 7, 4, 3, 1])  # K_u = 3, 2, 2, 1, 1
    k_u = [3, 2, 2, 1, 1]
    with torch.no_grad():
        out = model.encode_user(batch)  # [B, K, D]
        interests, active = model.interests(batch)
    assert out.shape == (5, K, D)
    assert active.sum(1).tolist() == k_u
    for row, k in enumerate(k_u):
        torch.testing.assert_close(out[row, :k], interests[row, :k], rtol=0, atol=0)
        for j in range(k, K):
            assert torch.equal(out[row, j], out[row, 0])
    # Best-score retrieval over the K rows equals best score over the K_u real interests.
    items = model.encode_item({B.ITEM: torch.arange(1, NUM_ITEMS + 1)})
    merged = score_items(out, items)
    for row, k in enumerate(k_u):
        torch.testing.assert_close(merged[row], (interests[row, :k] @ items.T).amax(0))


def test_mind_dynamic_interests_excludes_inactive_interests_from_training_attention():
    model = make_model("mind", num_interests=4, dynamic_interests=True).eval()
    batch = train_batch()
    batch[B.HIST_LEN] = torch.tensor([1, 1, 1, 1, 1])  # K_u = 1 everywhere
    batch[B.HIST] = batch[B.HIST] * length_mask(batch[B.HIST_LEN], MAX_LEN)
    with torch.no_grad():
        user, _, _ = towers(model, batch)
        interests, _ = model.interests(batch)
    torch.testing.assert_close(user, interests[:, 0])


def test_mind_without_dynamic_interests_keeps_k_distinct_interests():
    model = make_model("mind", num_interests=3).eval()
    with torch.no_grad():
        out = model.encode_user(user_batch(seed=8, hist_lens=[8, 5]))
    assert out.shape == (2, 3, D)
    assert not torch.allclose(out[:, 0], out[:, 1]) and not torch.allclose(out[:, 1], out[:, 2])


def test_mind_routing_iterations_change_the_output():
    base = make_model("mind", routing_iterations=3)
    batch = user_batch(seed=10)
    outs = {}
    for iters in (1, 2, 3, 5):
        m = make_model("mind", routing_iterations=iters)
        m.load_state_dict(base.state_dict())
        with torch.no_grad():
            outs[iters] = m.eval().encode_user(batch)
    real = batch[B.HIST_LEN] > 0
    for a, b in ((1, 2), (2, 3), (3, 5)):
        assert not torch.allclose(outs[a][real], outs[b][real], atol=1e-5), (a, b)


def test_mind_routing_is_random_in_training_and_fixed_in_eval():
    model = make_model("mind")
    batch = user_batch(seed=11, hist_lens=[8, 6, 4])
    with torch.no_grad():
        model.train()
        assert not torch.allclose(model.encode_user(batch), model.encode_user(batch))
        model.eval()
        assert torch.equal(model.encode_user(batch), model.encode_user(batch))


def test_mind_behaviours_same_by_table_or_by_lookup():
    """S e_i is computed on the whole table when the batch has more positions than there are items,
    else per position: the same values and gradients either way; padding stays 0 and gets no gradient."""
    model = make_model("mind").train()
    small = user_batch(seed=12, hist_lens=[3, 1])  # 16 positions < 41 items: per position
    large = {k: v.repeat(4, *[1] * (v.dim() - 1)) for k, v in small.items()}  # 64 positions: the table path
    assert small[B.HIST].numel() < model.item_emb.num_embeddings <= large[B.HIST].numel()
    grads = []
    for batch in (small, large):
        model.zero_grad()
        low = model.behaviours(batch[B.HIST])
        (low[: len(small[B.HIST])] * torch.arange(D)).sum().backward()  # the same first rows both times
        grads.append((model.item_emb.weight.grad.clone(), model.bilinear.weight.grad.clone()))
        torch.testing.assert_close(low, model.bilinear(model.item_emb(batch[B.HIST])))
        assert torch.all(low[batch[B.HIST] == 0] == 0)
        assert torch.all(model.item_emb.weight.grad[0] == 0)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_mind_rejects_bad_sizes():
    with pytest.raises(ValueError, match="routing_iterations"):
        MIND(tiny_schema(), D, routing_iterations=0)


# ---- dropout ----------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_drops_at_its_rate_and_scales_what_it_keeps(p):
    x = torch.ones(1_000_000)
    torch.manual_seed(3)
    y = dropout(x, p)
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / x.numel())  # five standard errors
    kept = y[y != 0]
    assert torch.all(kept == kept[0]) and kept[0].item() == pytest.approx(1 / (1 - p), rel=1e-4)
    assert y.mean().item() == pytest.approx(1.0, abs=5e-3)  # unbiased
    torch.manual_seed(3)
    assert torch.equal(dropout(x, p), y)  # seeded by torch's generator


def test_dropout_masks_odd_sizes_and_is_the_identity_when_off():
    x = torch.randn(3, 5, 7)  # 105 elements: not a multiple of the four draws in a 64-bit integer
    assert dropout(x, 0.3).shape == x.shape
    assert dropout(x, 0.3, training=False) is x and dropout(x, 0.0) is x
    layer = Dropout(0.3).eval()
    assert layer(x) is x
    with pytest.raises(ValueError, match="dropout rate"):
        Dropout(1.0)


def test_dropout_gradient_is_its_mask():
    x = torch.randn(64, 50, requires_grad=True)
    y = dropout(x, 0.2)
    y.sum().backward()
    keep = y.detach() != 0
    assert torch.all(x.grad[~keep] == 0)
    assert torch.allclose(x.grad[keep], torch.full_like(x.grad[keep], 1 / 0.8), rtol=1e-4)


def test_sasrec_training_attention_is_sdpa_without_its_dropout():
    """The training path's attention, dropout off, equals torch's scaled_dot_product_attention."""
    torch.manual_seed(5)
    q, k, v = (torch.randn(4, 2, 6, 8) for _ in range(3))
    allowed = (torch.ones(6, 6, dtype=torch.bool).tril()[None] & (torch.arange(6) < 4)[None, None]).unsqueeze(1)
    allowed = allowed | (torch.arange(6) == 0)  # key 0 always visible, as the model keeps it
    ours = attention_with_dropout(q, k, v, allowed.expand(4, 1, 6, 6), 0.0)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed.expand(4, 1, 6, 6))
    assert torch.allclose(ours, sdpa, atol=1e-6)


# ---- model-specific checks ---------------------------------------------------------------


def test_sasrec_heads_must_divide_the_dimension():
    with pytest.raises(ValueError, match="num_heads"):
        make_model("sasrec", num_heads=3)


def test_sasrec_is_causal_over_real_positions():
    """The output at the last real item sees all of the history: the first item matters too."""
    model = make_model("sasrec").eval()
    batch = user_batch(seed=12, hist_lens=[5])
    changed = {**batch, B.HIST: batch[B.HIST].clone()}
    changed[B.HIST][0, 0] = changed[B.HIST][0, 0] % NUM_ITEMS + 1
    with torch.no_grad():
        assert not torch.allclose(model.encode_user(batch), model.encode_user(changed))


@pytest.mark.parametrize("name, params, timed", [("sasrec", {"num_heads": 2}, False), ("hstu", {"num_heads": 2}, True),
                                                  ("hstu", {"num_blocks": 1}, False)])
def test_user_vector_is_the_state_at_the_last_position(name, params, timed):
    """encode_user computes the last block at each row's last real position only: the same vector as the full
    pass's state there (gather_last of encode_sequence), for every history length (an empty one gives 0) and a
    batch narrower than max_len; timestamps (HSTU's time bias) included."""
    from ray_recall.models.layers import gather_last

    model = make_model(name, **params).eval()
    for width in (MAX_LEN, 6):
        batch = user_batch(seed=14, hist_lens=[min(n, width) for n in HIST_LENS])
        batch[B.HIST] = batch[B.HIST][:, :width]
        if timed:
            batch[B.HIST_TIME] = torch.cumsum(torch.rand(batch[B.HIST].shape, dtype=torch.float64) * 1e5, dim=1) \
                * length_mask(batch[B.HIST_LEN], width)
        with torch.no_grad():
            user, full = model.encode_user(batch), gather_last(model.encode_sequence(batch), batch[B.HIST_LEN])
        assert user.shape == (len(HIST_LENS), D)
        torch.testing.assert_close(user, full, atol=1e-6, rtol=1e-5)
        assert torch.all(user[batch[B.HIST_LEN] == 0] == 0) and torch.all(user[batch[B.HIST_LEN] > 0].norm(dim=-1) > 0)


def test_youtubednn_optional_parts_change_the_input_width():
    plain = make_model("youtubednn", user_features=[], use_user_id=False)
    full = make_model("youtubednn", user_features=["taste"], use_user_id=True, item_features=["category", "tags"])
    assert full.user_tower[0].in_features > plain.user_tower[0].in_features
    assert full.item_feat_proj is not None and plain.item_feat_proj is None
    with torch.no_grad():
        assert full.eval().encode_item({B.ITEM: torch.arange(1, 5)}).shape == (4, D)


def test_unknown_feature_names_fail_clearly():
    with pytest.raises(ValueError, match="not in the data"):
        make_model("youtubednn", user_features=["age"])


def test_comirec_uses_a_newly_real_position():
    """Raising HIST_LEN over a position makes it count (the mask follows HIST_LEN, not the stored id)."""
    model = make_model("comirec", use_positional=True).eval()
    batch = user_batch(seed=13, hist_lens=[2])
    longer = {**batch, B.HIST_LEN: torch.tensor([3])}
    longer[B.HIST] = batch[B.HIST].clone()
    longer[B.HIST][0, 2] = 1
    with torch.no_grad():
        assert not torch.allclose(model.encode_user(batch), model.encode_user(longer))


def test_describe_trained_reads_dim_and_interests_without_the_weights(trained_run):
    """The embed stage's driver describes the model from a meta-device build; it must agree with the real one."""
    from ray_recall.models import describe_trained, interests_of, load_trained
    from ray_recall.rundir import RunDir

    cfg, _ = trained_run
    run = RunDir(cfg.run_dir)
    model, _ = load_trained(run)
    assert describe_trained(run) == (model.embedding_dim, interests_of(model))
    for name in available_models():  # every model builds on the meta device (no memory), as describe_trained does
        with torch.device("meta"):
            m = build_model(name, tiny_schema(), 16, {})
        assert m.embedding_dim == 16 and all(p.is_meta for p in m.parameters())


def test_bound_heap_growth_fixes_the_mmap_threshold_on_glibc_and_is_a_no_op_elsewhere():
    import platform

    from ray_recall.runtime import bound_heap_growth

    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert bound_heap_growth() is glibc
