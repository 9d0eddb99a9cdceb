"""docs/tutorial.md runs: its python blocks, in order, in one namespace, on a sample of MovieLens-100K users."""

from __future__ import annotations

import os
import re
import tempfile

import numpy as np
import pytest

TUTORIAL = os.path.join(os.path.dirname(__file__), "..", "docs", "tutorial.md")
SAMPLE_USERS = 120  # ~12k ratings: every block runs, including two Ray Train fits, in about a minute
MAX_EPOCHS = 2  # the tutorial says 10; the blocks run the same, two epochs keep CI short


def python_blocks(path: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a markdown file, in order."""
    with open(path) as f:
        return re.findall(r"^```python\n(.*?)^```", f.read(), flags=re.S | re.M)


def test_tutorial_has_the_workflow_blocks():
    code = "\n".join(python_blocks(TUTORIAL))
    for call in ("load_movielens(", "generate_seq_features(", "negative_sample(", "MatchTrainer(", ".fit(data.train, data.val)",
                 "evaluate_recall(", "evaluate_hit_rate(", "VectorIndex(", "item_vectors(model)", "user_vector(model",
                 "torch.save(model.state_dict()", "load_state_dict(torch.load(", "GRU4Rec(", "MIND("):
        assert call in code, call


def test_tutorial_runs(ray_session, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TUTORIAL_SAMPLE_USERS", str(SAMPLE_USERS))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # generate_seq_features' default run directory
    from ray_recall.train import MatchTrainer

    init = MatchTrainer.__init__

    def capped_init(self, *args, n_epochs=None, **kwargs):
        init(self, *args, n_epochs=min(n_epochs or MAX_EPOCHS, MAX_EPOCHS), **kwargs)

    monkeypatch.setattr(MatchTrainer, "__init__", capped_init)
    namespace: dict = {"__name__": "tutorial"}
    for i, block in enumerate(python_blocks(TUTORIAL)):
        try:
            exec(compile(block, f"docs/tutorial.md block {i + 1}", "exec"), namespace)
        except Exception as e:
            pytest.fail(f"docs/tutorial.md python block {i + 1} failed: {type(e).__name__}: {e}\n{block}")
    out = capsys.readouterr().out

    data, model, mind = namespace["data"], namespace["model"], namespace["mind"]
    assert data.num_users == SAMPLE_USERS
    assert str(data.run_dir).startswith(str(tmp_path))
    # Both models were trained by Ray Train and came back usable in-process.
    assert model.training is False and mind.training is False
    assert namespace["trainer"].summary["num_workers"] == 2
    metrics = namespace["metrics"]
    assert set(metrics) == {f"{m}@{k}" for m in ("recall", "hit_rate", "ndcg", "mrr") for k in (10, 50)}
    assert 0.0 < metrics["recall@50"] <= 1.0
    # Retrieval answered in original ids and skipped the user's own items.
    recommended = namespace["recommended"]
    assert len(recommended) == 10 and not set(recommended) & namespace["seen"]
    assert set(recommended) <= set(data.item_ids.tolist())
    assert namespace["interests"].shape == (4, mind.embedding_dim)
    assert "best epoch" in out and "Recall@10" in out
    assert np.allclose(data.user_vector(namespace["restored"], user_id=namespace["user_id"]),
                       data.user_vector(model, user_id=namespace["user_id"]))
