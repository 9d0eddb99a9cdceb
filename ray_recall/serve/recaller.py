"""`Recaller`: top-K items for a user of a trained run, or for an ad-hoc history. Plain Python, no Ray.

The Serve app is a thin adapter around `Recaller.recall_batch`, which answers many queries with
one user-tower pass (for the histories) and one FAISS search (for every query vector).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ray_recall.batch import pad_histories
from ray_recall.errors import RayRecallError
from ray_recall.models import build_from_file
from ray_recall.retrieval import VectorIndex, merge_interests
from ray_recall.rundir import RunDir

UNKNOWN_ITEMS = ("ignore", "error")  # what a history item outside the run's items does


class UnknownUserError(RayRecallError, KeyError):
    def __str__(self) -> str:
        return self.args[0]


class InvalidQueryError(RayRecallError, ValueError):
    """A query this run cannot answer as asked (the endpoint's 422); `field` names the query field at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Query:
    """One recall question: exactly one of `user_id` (a user of the run) or `history`.

    history: original item ids, oldest first, for a user the run need not know; the user tower
        encodes its last max_len known items.
    exclude_seen: drop the user's known items (user_id) or the history's items (history).
    exclude: original item ids never returned.
    """

    user_id: Any = None
    history: Sequence | None = None
    k: int = 10
    exclude_seen: bool = True
    exclude: Sequence = ()


@dataclass
class _Plan:
    """A validated query in dense ids: where its vector comes from and what to drop from its results."""

    query: Query
    drop: np.ndarray  # dense item ids never returned (seen and excluded)
    unknown: list = field(default_factory=list)  # history items outside the run, as sent
    user: int = 0  # dense user id (user_id queries)
    hist: np.ndarray | None = None  # dense history to encode (history queries), oldest first


class Recaller:
    """Loads <run>/ (vocab, model, user embeddings, index, sequences) and answers recall queries in original ids.

    unknown_items: "ignore" (skip history items outside the run and report them) or "error" (reject the query).
    max_history: the longest history accepted, in items.
    """

    def __init__(self, run_uri: str, *, unknown_items: str = "ignore", max_history: int = 1000):
        import faiss

        if unknown_items not in UNKNOWN_ITEMS:
            raise ValueError(f"unknown_items={unknown_items!r}; choose one of {list(UNKNOWN_ITEMS)}")
        if int(max_history) < 1:
            raise ValueError(f"max_history={max_history!r} must be >= 1")
        faiss.omp_set_num_threads(1)  # one query at a time: threads only add overhead
        self.unknown_items, self.max_history = unknown_items, int(max_history)
        self.run = RunDir(run_uri)
        self.run.verify_stages("serve")  # a truncated or altered file of the run is an error naming it
        meta = self.run.read_meta()
        self.users = self.run.read_user_vocab()
        self.user_raw = self.users.ids  # dense id d -> user_raw[d - 1]
        self.items = self.run.read_item_vocab()
        self.item_raw = self.items.ids  # sorted: dense item id d -> item_raw[d - 1]
        self.titles = self.run.read_items()["title"].to_numpy()
        self.seqs = self.run.read_sequences(meta["num_users"])
        ids, vecs = self.run.read_embeddings("users")
        self.user_vecs = np.zeros((meta["num_users"] + 1,) + vecs.shape[1:], dtype=np.float32)  # [U+1, D] or [U+1, K, D]
        self.user_vecs[ids] = vecs
        self.has_vector = np.zeros(meta["num_users"] + 1, dtype=bool)
        self.has_vector[ids] = True
        self.index = VectorIndex.load(self.run)
        model_file = self.run.read_model()
        self.model = build_from_file(model_file, self.run.read_schema())
        self.max_len = int(self.model.max_len)
        self.model_name = model_file.name
        self.info = {"run": self.run.uri, "model": self.model_name, "index": self.index.factory,
                     "metric": self.index.metric, "items": len(self.index), "users": int(len(ids)),
                     "interests": int(vecs.shape[1]) if vecs.ndim == 3 else 1, "history_queries": self.encodes_history,
                     "max_history": self.max_history, "unknown_items": self.unknown_items}

    @property
    def encodes_history(self) -> bool:
        """Whether the user tower reads the history, so that a history alone makes a meaningful user vector.

        Every sequence model does; DSSM only with use_history=True (otherwise it sees the user id and
        attributes only, which an ad-hoc history does not have).
        """
        return bool(getattr(self.model, "use_history", True))

    def dense_user(self, user_id) -> int:
        d = int(self.users.encode([user_id])[0])
        if d == 0 or not self.has_vector[d]:
            raise UnknownUserError(f"unknown user_id {user_id!r}: not in this run's users")
        return d

    def dense_items(self, raw_items: Sequence) -> np.ndarray:
        """Original item ids [N] -> dense ids [N] (0 where the item is not in the run)."""
        if len(raw_items) == 0:
            return np.zeros(0, dtype=np.int64)
        values = np.asarray(list(raw_items))
        if values.dtype.kind == "O":  # e.g. ints beyond int64: compare as strings
            values = values.astype(str)
        return self.items.encode(values)

    def history(self, user_id) -> list:
        """The user's known items (original ids), oldest first."""
        return self.item_raw[self.seqs.sequence(self.dense_user(user_id)) - 1].tolist()

    def recall(self, user_id, k: int = 10, exclude_seen: bool = True) -> list[dict]:
        """Top-k items for a known user: [{"item_id": original id, "score": float, "title": str}, ...]."""
        return self.answer(Query(user_id=user_id, k=k, exclude_seen=exclude_seen))["items"]

    def answer(self, query: Query) -> dict:
        """One query -> {"items": [...], "unknown_items": [...]}; raises UnknownUserError / InvalidQueryError."""
        (result,) = self.recall_batch([query])
        if isinstance(result, Exception):
            raise result
        return result

    def recall_batch(self, queries: Sequence[Query]) -> list[dict | UnknownUserError | InvalidQueryError]:
        """Answer many queries with one user-tower pass and one index search.

        Returns, per query in order, {"items": [{"item_id", "score", "title"}, ...] best first,
        "unknown_items": history items outside the run, as sent} or the error that query raised
        (a bad query never fails the others).
        """
        out: list = [None] * len(queries)
        plans: dict[int, _Plan] = {}
        for i, q in enumerate(queries):
            try:
                plans[i] = self._plan(q)
            except (UnknownUserError, InvalidQueryError) as e:
                out[i] = e
        if not plans:
            return out
        # One vector block per query: [1, D] for single-interest models, [K, D] for multi-interest ones.
        vecs: dict[int, np.ndarray] = {i: self.user_vecs[p.user] for i, p in plans.items() if p.hist is None}
        encode = [i for i, p in plans.items() if p.hist is not None]
        if encode:
            for i, v in zip(encode, self._encode_histories([plans[i].hist for i in encode])):
                vecs[i] = v
        order = list(plans)
        dim = self.index.index.d
        rows = [vecs[i].reshape(-1, dim) for i in order]
        fetch = min(max(plans[i].query.k + len(plans[i].drop) for i in order), len(self.index))
        ids, scores = self.index.search(np.concatenate(rows), fetch)  # [sum of rows, fetch]
        start = 0
        for i, r in zip(order, rows):
            p = plans[i]
            qi, qs = ids[start:start + len(r)], scores[start:start + len(r)]
            start += len(r)
            if len(r) > 1:  # multi-interest: every interest searched, merged by best score
                qi, qs = merge_interests(qi, qs, fetch)
            else:
                qi, qs = qi[0], qs[0]
            keep = (qi > 0) & ~np.isin(qi, p.drop)
            qi, qs = qi[keep][:p.query.k], qs[keep][:p.query.k]
            out[i] = {"items": [{"item_id": _py(self.item_raw[j - 1]), "score": float(s), "title": str(self.titles[j - 1])}
                                for j, s in zip(qi, qs)],
                      "unknown_items": p.unknown}
        return out

    def _plan(self, q: Query) -> _Plan:
        if isinstance(q.k, bool) or not isinstance(q.k, (int, np.integer)) or q.k < 1:
            raise InvalidQueryError("k", f"k must be an integer >= 1, got {q.k!r}")
        if (q.user_id is None) == (q.history is None):
            raise InvalidQueryError("user_id", "give exactly one of user_id (a user of this run) or history "
                                               "(original item ids, oldest first)")
        excluded = self.dense_items(q.exclude)
        excluded = excluded[excluded > 0]
        if q.history is None:
            d = self.dense_user(q.user_id)
            seen = self.seqs.sequence(d) if q.exclude_seen else np.zeros(0, np.int64)
            return _Plan(q, drop=np.union1d(seen, excluded), user=d)
        history = list(q.history)
        if not self.encodes_history:
            raise InvalidQueryError("history", f"this run's model ({self.model_name} trained with use_history=False) "
                                               "does not read a history, so it cannot encode a user from one: "
                                               "query by user_id")
        if not history:
            raise InvalidQueryError("history", "history is empty: give at least one original item id")
        if len(history) > self.max_history:
            raise InvalidQueryError("history", f"history has {len(history)} items; at most {self.max_history} "
                                               "are accepted")
        dense = self.dense_items(history)
        unknown = list(dict.fromkeys(h for h, d in zip(history, dense) if d == 0))
        if unknown and self.unknown_items == "error":
            shown = ", ".join(repr(u) for u in unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
            raise InvalidQueryError("history", f"history has {len(unknown)} item id(s) not in this run's items: {shown}")
        known = dense[dense > 0]
        if len(known) == 0:
            raise InvalidQueryError("history", f"none of the history's {len(history)} item id(s) is in this run's "
                                               "items: nothing to encode")
        seen = known if q.exclude_seen else np.zeros(0, np.int64)
        return _Plan(q, drop=np.union1d(seen, excluded), unknown=unknown, hist=known[-self.max_len:])

    @torch.inference_mode()
    def _encode_histories(self, histories: list[np.ndarray]) -> np.ndarray:
        """Dense histories (each oldest first, <= max_len) -> user vectors [B, D] or [B, K, D], one model pass."""
        batch = pad_histories(histories, self.max_len)  # user 0: a user the run does not know
        return self.model.encode_user(batch).numpy().astype(np.float32, copy=False)


def _py(v):
    return v.item() if hasattr(v, "item") else v
