"""A worker asks Ray Data for an epoch before it trains on it (stages/train/loop.py: EarlyEpoch): its first epoch as it
starts, before it has built its model, and each next one while the last is validated. The same chunks either way, and
nothing left waiting when the worker fails first."""

import threading
import time

import numpy as np
import pyarrow as pa
import torch
from ray.data.collate_fn import ArrowBatchCollateFn

from ray_recall.stages.train.loop import EarlyEpoch, epoch_chunks


class UsersOf(ArrowBatchCollateFn):
    """A chunk -> its users, tagged so that which collate_fn built it shows."""

    def __init__(self, tag: int = 0):
        super().__init__()
        self.tag = tag

    def __call__(self, rows: pa.Table) -> dict[str, torch.Tensor]:
        users = torch.from_numpy(rows.column("user_idx").to_numpy().astype(np.int64))
        return {"user": users, "tag": torch.full_like(users, self.tag)}


class RecordingShard:
    """A shard (duck-typed DataIterator) over one table: records when its epoch's first chunk is asked for."""

    def __init__(self, table: pa.Table):
        self.table, self.asked = table, threading.Event()

    def iter_torch_batches(self, batch_size, collate_fn, **_):
        self.asked.set()
        for start in range(0, self.table.num_rows, batch_size):
            yield collate_fn(self.table.slice(start, batch_size))


def _users(n: int) -> pa.Table:
    return pa.table({"user_idx": np.arange(1, n + 1, dtype=np.int32)})


def _early_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ray-recall-early-chunk"]


def test_early_first_epoch_gives_the_chunks_of_the_epoch(ray_session):
    """Same rows, same local shuffle, same chunks as the epoch asked for the usual way, built by the builder given
    later."""
    import ray

    ds = ray.data.from_arrow([_users(300).slice(i, 60) for i in range(0, 300, 60)]).materialize()
    ds.context.execution_options.preserve_order = True  # as the training ingest is (stages/train/stage.py)
    early = EarlyEpoch(ds, 32, 7, 0, 1, 0)
    early.give(UsersOf(tag=1))
    got = list(early.chunks())
    want = list(epoch_chunks(ds, UsersOf(), 32, 7, 0, 1, 0))
    assert [len(c["user"]) for c in got] == [len(c["user"]) for c in want]
    assert torch.equal(torch.cat([c["user"] for c in got]), torch.cat([c["user"] for c in want]))
    users = torch.cat([c["user"] for c in got])
    assert sorted(users.tolist()) == list(range(1, 301))  # every user once
    assert not torch.equal(users, torch.arange(1, 301))  # shuffled: the seed reached both
    assert all(bool((c["tag"] == 1).all()) for c in got)  # built by the builder given later


def test_a_next_epoch_asked_for_with_its_builder_gives_its_chunks(ray_session):
    """Epoch 1 asked for early (its builder given at once, as while epoch 0 is validated): epoch 1's chunks, not 0's."""
    import ray

    ds = ray.data.from_arrow([_users(300).slice(i, 60) for i in range(0, 300, 60)]).materialize()
    ds.context.execution_options.preserve_order = True
    list(epoch_chunks(ds, UsersOf(), 32, 7, 0, 1, 0))  # epoch 0, read the usual way
    early = EarlyEpoch(ds, 32, 7, 1, 1, 0, UsersOf(tag=3))
    got = torch.cat([c["user"] for c in early.chunks()])
    want = torch.cat([c["user"] for c in epoch_chunks(ds, UsersOf(), 32, 7, 1, 1, 0)])
    epoch0 = torch.cat([c["user"] for c in epoch_chunks(ds, UsersOf(), 32, 7, 0, 1, 0)])
    assert torch.equal(got, want)
    assert not torch.equal(got, epoch0)  # the epoch's own shuffle


def test_first_chunk_is_asked_for_before_the_builder_is_given():
    shard = RecordingShard(_users(10))
    early = EarlyEpoch(shard, 4, 0, 0, 1, 0)
    assert shard.asked.wait(10)  # while the worker would still be building its model
    early.give(UsersOf(tag=2))
    chunks = list(early.chunks())
    assert [c["user"].tolist() for c in chunks] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert all(bool((c["tag"] == 2).all()) for c in chunks)


def test_a_worker_failing_before_its_first_epoch_leaves_no_thread_waiting():
    shard = RecordingShard(_users(10))
    early = EarlyEpoch(shard, 4, 0, 0, 1, 0)
    assert shard.asked.wait(10)
    assert _early_threads()  # waiting for the builder
    early.cancel(RuntimeError("model failed to build"))
    deadline = time.monotonic() + 10
    while _early_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _early_threads()


def test_an_empty_shard_gives_an_empty_first_epoch():
    early = EarlyEpoch(RecordingShard(_users(0)), 4, 0, 0, 1, 0)
    early.give(UsersOf())
    assert list(early.chunks()) == []
