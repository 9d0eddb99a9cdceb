"""The per-worker training loop: plain PyTorch plus the Ray Train calls (data shard, DDP, report, checkpoint)."""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
import time
from concurrent.futures import Future

import numpy as np
import torch
import torch.distributed as dist

import ray.train
import ray.train.torch
from ray.data.collate_fn import ArrowBatchCollateFn
from ray_recall import batch as B
from ray_recall.batch import split_targets
from ray_recall.config import PipelineConfig, TrainConfig
from ray_recall.errors import ConfigError
from ray_recall.metrics import metrics_from_ranks
from ray_recall.models import available_models, build_model, get_model_class
from ray_recall.negatives import NegativeSampler
from ray_recall.ranking import embed_all_items, rank_targets
from ray_recall.rundir import ModelFile, RunDir, read_checkpoint_dir, write_checkpoint_dir
from ray_recall.runtime import emit, emit_progress
from ray_recall.stages.train.batches import SequenceBatchBuilder, examples_per_user, rows_per_chunk, split_batches
from ray_recall.stages.train.comm import gather_rows, setup_grad_sync
from ray_recall.stages.train.optim import Optimizers
from ray_recall.stages.train.step import ItemTables, batch_loss
from ray_recall.tracking import EpochLogger


def resolve_targets(tc: TrainConfig, model_name: str) -> str:
    """train.targets for this model: auto = all_positions for a causal model, per_prefix otherwise."""
    causal = get_model_class(model_name).causal
    if tc.targets == "auto":
        return "all_positions" if causal else "per_prefix"
    if tc.targets == "all_positions" and not causal:
        causal_models = ", ".join(n for n in available_models() if get_model_class(n).causal)
        raise ConfigError(f"train.targets='all_positions' needs a causal model ({causal_models}); "
                          f"{model_name!r} is not: use per_prefix or auto")
    return tc.targets


def chunk_rows(cfg: PipelineConfig, meta: dict, max_len: int) -> int:
    """Users per chunk that Ray Data hands a worker (about `batches.CHUNK_EXAMPLES` examples built from them)."""
    tc = cfg.train
    return rows_per_chunk(examples_per_user(meta, resolve_targets(tc, cfg.model.name), max_len, tc.window))


SPARSE_MIN_ROWS = 100_000  # train.sparse_embeddings=auto: id tables at least this large get sparse gradients


class Trainer:
    """What a worker trains with: the model, its optimizer, the batch builder's settings and the item tables."""

    def __init__(self, cfg: PipelineConfig, run: RunDir, device=None):
        tc = self.tc = cfg.train
        self.cfg = cfg
        self.schema = run.read_schema()
        self.meta = run.read_meta()
        counts = run.read_item_counts()
        self.sampler = NegativeSampler(counts, tc.sampler)  # positives rejected per batch, from the rows themselves
        self.tables = ItemTables.build(self.sampler.probs, counts, device)
        self.model = build_model(cfg.model.name, self.schema, cfg.model.embedding_dim, cfg.model.params)
        sparse_min = {"on": 1, "off": None}.get(tc.sparse_embeddings, None if tc.use_gpu else SPARSE_MIN_ROWS)
        self.optimizer = Optimizers(self.model, tc, sparse_min)
        self.targets = resolve_targets(tc, cfg.model.name)
        self.pack = (tc.pack and self.targets == "all_positions" and getattr(self.model, "packable", False)
                     and not (tc.in_batch_negatives or tc.shared_negatives or tc.length_buckets))
        full = tc.mode == "listwise" and tc.softmax == "full"
        self.num_negatives = 0 if full else tc.num_negatives
        self.rows_per_chunk = chunk_rows(cfg, self.meta, self.schema.max_len)

    def builder(self, epoch: int, batch_size: int | None = None) -> SequenceBatchBuilder:
        """The chunk builder of `epoch`; batch_size: the batches the chunks will be cut into (train.length_buckets,
        train.shared_negatives)."""
        batch_size = batch_size or self.tc.batch_size
        return SequenceBatchBuilder(self.sampler, self.schema.max_len, self.num_negatives, self.tc.seed, epoch,
                                    self.targets, self.tc.window, batch_size if self.tc.length_buckets else 0,
                                    batch_size if self.tc.shared_negatives else 0, batch_size if self.pack else 0)

    def step(self, model, batch: dict, weight: float = 1.0, gather=None) -> tuple[float, int]:
        """One gradient step (`model` may be DDP-wrapped); weight 0 = a step that only keeps DDP in step."""
        loss, targets = batch_loss(model, batch, self.tc, self.tables, gather)
        self.optimizer.zero_grad(set_to_none=True)
        (loss * weight).backward()
        self.optimizer.step()
        return loss.item(), targets


def lockstep(chunks, batch_size: int, world: int):
    """(batch, weight) from a stream of built chunks, the same number of steps on every worker.

    Workers stream different users, so their chunks hold different numbers of examples. After each chunk
    they agree (one small all-reduce) on the most batches any of them has; one with fewer repeats its last
    batch with weight 0 (no update, but DDP's gradient all-reduce and the in-batch gather still meet).
    Every example is used once per epoch on any number of workers.
    """
    it, last = iter(chunks), None
    while True:
        chunk = next(it, None)
        batches = list(split_batches(chunk, batch_size)) if chunk is not None and len(chunk[B.USER]) else []
        if world > 1:
            agreed = torch.tensor([len(batches), int(chunk is not None)])
            dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
            n, more = int(agreed[0]), bool(agreed[1])
        else:
            n, more = len(batches), chunk is not None
        if not more:
            return
        for i in range(n):
            if i < len(batches):
                last = batches[i]
                yield last, 1.0
            elif last is not None:
                yield last, 0.0
            else:
                raise RuntimeError("a training worker received no user at all while others did: give the run more "
                                   "users than train.num_workers")


def epoch_chunks(shard, collate_fn, rows: int, seed: int, epoch: int, world: int, rank: int):
    """One epoch of this worker's shard: chunks of `rows` users, locally shuffled (seeded by epoch and rank),
    built by `collate_fn` in Ray Data's prefetch thread."""
    return shard.iter_torch_batches(batch_size=rows, collate_fn=collate_fn, prefetch_batches=2,
                                    local_shuffle_buffer_size=max(4 * rows, 256),
                                    local_shuffle_seed=seed * 1000 + epoch * world + rank)


class _BuilderToCome(ArrowBatchCollateFn):
    """A collate_fn whose builder is given later (`give`): chunks wait for it, or raise what `fail` was given."""

    def __init__(self):
        super().__init__()
        self._builder: Future = Future()

    def give(self, builder: SequenceBatchBuilder) -> None:
        self._builder.set_result(builder)

    def fail(self, error: BaseException) -> None:
        if not self._builder.done():
            self._builder.set_exception(error)

    def __call__(self, rows):
        return self._builder.result()(rows)


class EarlyEpoch:
    """An epoch's chunks, asked of Ray Data before the worker is ready to train on them.

    Every epoch's first chunk waits for Ray Data to start the shard's epoch (the split coordinator's next
    execution) and for the chunk's build, and nothing of that depends on the model. So the epoch's stream is
    created early, and a thread asks it for its first chunk meanwhile:
    - the first epoch's as the worker starts, while it reads its data and builds its model, optimizer and
      validation sample (~3.5 s each here); its collate_fn waits for the builder (`give`);
    - each next epoch's as soon as an epoch's steps end, while rank 0 validates and reports its checkpoint,
      with the epoch's builder given at once.
    The chunks are those `epoch_chunks` gives with the builder itself: the same rows, order and draws.
    """

    def __init__(self, shard, rows: int, seed: int, epoch: int, world: int, rank: int,
                 builder: SequenceBatchBuilder | None = None):
        self._collate = _BuilderToCome()
        if builder is not None:
            self.give(builder)
        self._it = iter(epoch_chunks(shard, self._collate, rows, seed, epoch, world, rank))
        self._first: Future = Future()
        threading.Thread(target=self._pull, name="ray-recall-early-chunk", daemon=True).start()

    def _pull(self) -> None:
        try:
            self._first.set_result(next(self._it, None))
        except BaseException as e:  # handed to the loop, which raises it where the chunks are read
            self._first.set_exception(e)

    def give(self, builder: SequenceBatchBuilder) -> None:
        """The epoch's builder, when it was not given as the epoch was asked for."""
        self._collate.give(builder)

    def chunks(self):
        """The epoch's chunks (its builder given)."""
        first = self._first.result()
        return self._it if first is None else itertools.chain([first], self._it)

    def cancel(self, error: BaseException) -> None:
        """The worker failed before it had given the builder: release the waiting thread."""
        self._collate.fail(error)


def validate(model, val_rows, max_len: int, k: int) -> dict[str, float]:
    """Recall and NDCG at k of the validation targets of `val_rows` (sequence rows), exact full ranking."""
    model.eval()
    local, users, pos, targets = split_targets(val_rows, "val")
    ranks = rank_targets(model, local, embed_all_items(model), np.arange(len(users)), pos, targets, max_len,
                         user_ids=users)["model"]
    model.train()
    m = metrics_from_ranks(ranks, [k])
    return {f"val_recall@{k}": m[f"recall@{k}"], f"val_ndcg@{k}": m[f"ndcg@{k}"]}


def _announce(run: RunDir, rank: int) -> None:
    """Record where this worker runs (<run>/train_workers/rank-<r>.json): for operators, and for failure tests."""
    ctx = ray.get_runtime_context()
    run.write_worker_info(rank, {"rank": rank, "pid": os.getpid(), "node_id": ctx.get_node_id(), "started": time.time()})


def _set_up(cfg: PipelineConfig, run: RunDir, ckpt, rank: int):
    """A worker's model, optimizer and validation sample, from `ckpt` when it resumes ->
    (trainer, model (DDP-wrapped when world > 1), history, first epoch, validation rows (rank 0), grad-sync note)."""
    tc = cfg.train
    trainer = Trainer(cfg, run)
    start_epoch, history = 0, []
    if ckpt:
        with ckpt.as_directory() as d:
            state = read_checkpoint_dir(d)
        trainer.model.load_state_dict(state["model"].state_dict)
        trainer.optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"] + 1, state["history"]
    # DDP when world > 1 (moved to the GPU when use_gpu). Buffers are synced from rank 0 once, when DDP wraps the
    # model, not before every forward: the models' buffers (feature code tables, fixed routing logits) never change
    # while training. (`forward_sync_buffers` replaces torch's deprecated `broadcast_buffers`.)
    trainer.optimizer.sync_sparse_myself(trainer.model)  # sparse id tables: RowAdam averages their rows, not DDP
    model = ray.train.torch.prepare_model(trainer.model, parallel_strategy_kwargs={"forward_sync_buffers": False})
    sync = setup_grad_sync(model, tc.grad_sync)  # small gradients on CPU are latency-bound: see comm.py
    trainer.tables = trainer.tables.to(ray.train.torch.get_device())
    # Rank 0 validates on a seeded sample of at most val_max_users users, read from as few partition
    # files as hold it: its memory follows the sample, not the log.
    val = run.read_sequence_sample(tc.val_max_users, tc.seed) if rank == 0 else None
    return trainer, model, history, start_epoch, val, sync


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train's per-worker function. loop_config: {"cfg": PipelineConfig, "run_uri": str, "resume_from": path | None}."""
    cfg: PipelineConfig = loop_config["cfg"]
    run = RunDir(loop_config["run_uri"])
    tc = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(tc.num_threads or max(1, int(round(tc.cpus_per_worker))))
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)

    _announce(run, rank)
    shard = ray.train.get_dataset_shard("train")
    per_worker_batch = max(1, tc.batch_size // world)
    ckpt = ray.train.get_checkpoint()
    if ckpt is None and loop_config.get("resume_from"):
        ckpt = ray.train.Checkpoint(loop_config["resume_from"], filesystem=run.fs)
    early = None if ckpt else EarlyEpoch(shard, chunk_rows(cfg, run.read_meta(), run.read_schema().max_len),
                                         tc.seed, 0, world, rank)
    try:
        trainer, model, history, start_epoch, val, sync = _set_up(cfg, run, ckpt, rank)
    except BaseException as e:
        if early is not None:
            early.cancel(e)
        raise
    if early is not None:
        early.give(trainer.builder(start_epoch, per_worker_batch))
    core = getattr(model, "module", model)
    device = ray.train.torch.get_device()
    gather = gather_rows if world > 1 and tc.in_batch_negatives and tc.gather_negatives else None
    lines = loop_config.get("lines")  # the driver shows what goes there (runtime.worker_lines)
    say = rank == 0 and not loop_config.get("quiet")
    details = [sync] if sync else []
    if trainer.optimizer.sparse_rows:
        details.append(f"sparse id tables ({trainer.optimizer.sparse_rows:,} rows, lazy Adam)")
    if say and details:  # what the driver's own line about the fit cannot know
        emit(lines, f"[train] {'; '.join(details)}")
    log_epoch = EpochLogger(loop_config.get("tracking") if rank == 0 else None)

    for epoch in range(start_epoch, tc.epochs):
        t0, cpu0 = time.perf_counter(), time.process_time()
        model.train()
        loss_sum = torch.zeros(3, dtype=torch.float64)  # loss x targets, targets, this process's CPU seconds
        shard_users: list[np.ndarray] = []  # the users this worker trained on this epoch (a part of its shard)
        # Ray Data hands over chunks of whole users, built into examples (windows, negatives) in its prefetch
        # thread and cut into this worker's batches here: Ray Data's per-batch cost is paid once a chunk.
        if early is not None:  # asked for before this epoch (the one it is always for)
            chunks = early.chunks()
        else:
            chunks = epoch_chunks(shard, trainer.builder(epoch, per_worker_batch), trainer.rows_per_chunk, tc.seed,
                                  epoch, world, rank)
        shown = time.perf_counter()
        for step, (batch, weight) in enumerate(lockstep(chunks, per_worker_batch, world)):
            if tc.max_steps is not None and step >= tc.max_steps:  # every worker stops at the same step
                break
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            loss, targets = trainer.step(model, batch, weight, gather)
            if weight:
                loss_sum[:2] += torch.tensor([loss * targets, targets], dtype=torch.float64)
                if epoch == start_epoch:
                    users = batch.get(B.HIST_USER, batch[B.USER]).cpu().numpy()  # packed rows: every window's user
                    shard_users.append(np.unique(users[users > 0]) if B.HIST_USER in batch else np.unique(users))
            if say and time.perf_counter() - shown > 1.0:  # the driver's progress bar (on a terminal)
                shown = time.perf_counter()
                emit_progress(lines, f"[train] epoch {epoch + 1}/{tc.epochs}", int(loss_sum[1]) * world,
                              trainer.meta["samples"]["train"], "targets")
        loss_sum[2] = time.process_time() - cpu0
        epoch_seconds = round(time.perf_counter() - t0, 3)
        chunks = early = None  # this epoch's stream (prefetched chunks, if train.max_steps cut it) goes first
        if epoch + 1 < tc.epochs and not budget_spent([h["epoch_seconds"] for h in history] + [epoch_seconds], tc):
            # The next epoch's stream starts now, beside the validation and the checkpoint's report (rank 0) or
            # the wait for them (the other ranks); an early stop on validation leaves it unread, as does a budget
            # that only rank 0, which keeps the history, sees spent.
            early = EarlyEpoch(shard, trainer.rows_per_chunk, tc.seed, epoch + 1, world, rank,
                               trainer.builder(epoch + 1, per_worker_batch))
        if epoch == start_epoch:
            _record_shard(run, rank, shard_users)
        if world > 1:
            torch.distributed.all_reduce(loss_sum)
        # cpu_seconds: user + system CPU of every worker process in the epoch (all its threads), summed.
        # samples: training targets scored (per prefix: samples; all positions: positions with a next item).
        metrics = {"epoch": epoch, "loss": float(loss_sum[0] / max(loss_sum[1], 1)), "samples": int(loss_sum[1]),
                   "epoch_seconds": epoch_seconds, "cpu_seconds": round(float(loss_sum[2]), 3)}
        stop = torch.zeros(1)
        if rank == 0:
            metrics.update(validate(core, val, trainer.schema.max_len, tc.val_k))
            history.append(metrics)
            why = stop_reason(history, tc)
            stop[0] = float(why is not None)
            if say:
                emit(lines, f"[train] epoch {epoch + 1}/{tc.epochs} loss {metrics['loss']:.4f} "
                            f"{tc.selection_metric} {metrics[tc.selection_metric]:.4f} "
                            f"({metrics['samples'] / metrics['epoch_seconds']:.0f} targets/s)"
                            + (f" - {why}" if why else ""))
            log_epoch(metrics, step=epoch)
            with tempfile.TemporaryDirectory() as d:
                write_checkpoint_dir(d, model_file(core, cfg), trainer.optimizer.state_dict(), epoch, history)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)
        if world > 1:  # rank 0 alone validates; every rank must leave the loop together
            torch.distributed.broadcast(stop, src=0)
        if stop[0]:
            break


def _record_shard(run: RunDir, rank: int, users: list[np.ndarray]) -> None:
    """Add to this worker's train_workers/rank-R.json what users it trained on in its first epoch: how many, and
    their sum and sum of squares (enough to tell that workers' users are disjoint and cover the data)."""
    u = np.unique(np.concatenate(users)) if users else np.zeros(0, np.int64)
    info = run.read_worker_infos().get(rank, {})
    run.write_worker_info(rank, {**info, "shard_users": int(len(u)), "shard_user_sum": int(u.sum()),
                                 "shard_user_sq_sum": int((u.astype(np.float64) ** 2).sum())})


def model_file(model: torch.nn.Module, cfg: PipelineConfig) -> ModelFile:
    """What a checkpoint and model/model.pt store of a (possibly DDP-wrapped) model."""
    model = getattr(model, "module", model)
    return ModelFile(cfg.model.name, cfg.model.embedding_dim, dict(cfg.model.params),
                     {k: v.detach().cpu() for k, v in model.state_dict().items()})


def stop_reason(history: list[dict], tc) -> str | None:
    """Why training stops after the last epoch of `history`, or None to go on.

    "early stop": no better selection metric in the last `early_stopping_patience` epochs.
    "time budget": `budget_spent` by the epochs' wall time.
    """
    patience = tc.early_stopping_patience
    if patience and len(history) > patience:
        values = [h[tc.selection_metric] for h in history]
        if max(values[-patience:]) <= max(values[:-patience]):
            return "early stop"
    if budget_spent([h["epoch_seconds"] for h in history], tc):
        return "time budget"
    return None


def budget_spent(epoch_seconds: list[float], tc) -> bool:
    """Whether another epoch, if it took as long as the last of `epoch_seconds`, would end past
    `train.max_train_seconds` of epochs (their wall time; validation is not counted). No budget: never."""
    return (tc.max_train_seconds is not None and bool(epoch_seconds)
            and sum(epoch_seconds) + epoch_seconds[-1] > tc.max_train_seconds)
