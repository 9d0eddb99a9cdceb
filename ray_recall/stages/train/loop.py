"""The per-worker training loop: plain PyTorch plus the Ray Train calls (data shard, DDP, report, checkpoint)."""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch

import ray.train
import ray.train.torch
from ray_recall import batch as B
from ray_recall.config import PipelineConfig
from ray_recall.metrics import metrics_from_ranks
from ray_recall.models import build_model
from ray_recall.negatives import NegativeSampler
from ray_recall.objectives import listwise_loss, pairwise_loss, pointwise_loss
from ray_recall.ranking import embed_all_items, rank_targets
from ray_recall.rundir import ModelFile, RunDir, read_checkpoint_dir, write_checkpoint_dir
from ray_recall.stages.train.batches import TrainBatchBuilder, chunk_size, split_batches
from ray_recall.stages.train.comm import setup_grad_sync


def train_step_loss(model, batch: dict, cfg) -> torch.Tensor:
    """Objective (plus embedding L2) for one batch. `model` may be DDP-wrapped: its forward runs both towers."""
    device_type = batch[B.USER].device.type
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        user, pos, neg = model(batch)
    user, pos, neg = user.float(), pos.float(), neg.float()  # the loss in fp32 either way
    if cfg.mode == "listwise":
        loss = listwise_loss(user, pos, neg, temperature=cfg.temperature, in_batch=cfg.in_batch_negatives,
                             pos_ids=batch[B.POS], pos_logq=batch[B.POS_LOGQ] if cfg.in_batch_negatives else None)
    else:
        loss = (pointwise_loss if cfg.mode == "pointwise" else pairwise_loss)(user, pos, neg, temperature=cfg.temperature)
    if cfg.embedding_l2 > 0:
        loss = loss + cfg.embedding_l2 * (user.pow(2).sum() + pos.pow(2).sum() + neg.pow(2).sum()) / len(user)
    return loss


def setup_training(cfg: PipelineConfig, run: RunDir):
    """What every trainer loads from a run: (schema, sequences, negative sampler, fresh model, Adam optimizer)."""
    tc = cfg.train
    schema = run.read_schema()
    seqs = run.read_sequences(schema.num_users)
    sampler = NegativeSampler(run.read_item_counts(), tc.sampler, seqs.train_positive_keys(schema.num_items))
    model = build_model(cfg.model.name, schema, cfg.model.embedding_dim, cfg.model.params)
    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    return schema, seqs, sampler, model, optimizer


def optimizer_step(model, optimizer, batch: dict, cfg) -> float:
    """One gradient step on `batch`; returns the batch loss."""
    loss = train_step_loss(model, batch, cfg)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def validate(model, seqs, val: dict[str, np.ndarray], max_len: int, k: int) -> dict[str, float]:
    model.eval()
    item_vecs = embed_all_items(model)
    ranks = rank_targets(model, seqs, item_vecs, val["user_idx"], val["pos"], val["target"], max_len)["model"]
    model.train()
    m = metrics_from_ranks(ranks, [k])
    return {f"val_recall@{k}": m[f"recall@{k}"], f"val_ndcg@{k}": m[f"ndcg@{k}"]}


def _announce(run: RunDir, rank: int) -> None:
    """Record where this worker runs (<run>/train_workers/rank-<r>.json): for operators, and for failure tests."""
    ctx = ray.get_runtime_context()
    run.write_worker_info(rank, {"rank": rank, "pid": os.getpid(), "node_id": ctx.get_node_id(), "started": time.time()})


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
    schema, seqs, sampler, model, optimizer = setup_training(cfg, run)

    start_epoch, history = 0, []
    ckpt = ray.train.get_checkpoint()
    if ckpt is None and loop_config.get("resume_from"):
        ckpt = ray.train.Checkpoint(loop_config["resume_from"], filesystem=run.fs)
    if ckpt:
        with ckpt.as_directory() as d:
            state = read_checkpoint_dir(d)
        model.load_state_dict(state["model"].state_dict)
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"] + 1, state["history"]
    # DDP when world > 1 (moved to the GPU when use_gpu). No buffer broadcast before every forward: the
    # models' buffers (feature code tables, fixed routing logits) never change while training.
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"broadcast_buffers": False})
    sync = setup_grad_sync(model, tc.grad_sync)  # small gradients on CPU are latency-bound: see comm.py
    if rank == 0 and sync:
        print(f"[train] {world} workers; {sync}", flush=True)
    device = ray.train.torch.get_device()
    core = getattr(model, "module", model)

    val = None
    if rank == 0:
        val_df = run.read_split("val")
        if len(val_df) > tc.val_max_users:
            val_df = val_df.sample(tc.val_max_users, random_state=tc.seed)
        val = {c: val_df[c].to_numpy() for c in ("user_idx", "pos", "target")}

    shard = ray.train.get_dataset_shard("train")
    per_worker_batch = max(1, tc.batch_size // world)
    for epoch in range(start_epoch, tc.epochs):
        t0, cpu0 = time.perf_counter(), time.process_time()
        model.train()
        builder = TrainBatchBuilder(seqs, sampler, schema.max_len, tc.num_negatives, tc.seed, epoch)
        loss_sum = torch.zeros(3, dtype=torch.float64)  # loss x samples, samples, this process's CPU seconds
        # Ray Data hands over chunks of several steps' samples, built (windows, negatives) in its prefetch
        # thread and cut into this worker's batches here: Ray Data's per-batch cost is paid once a chunk.
        chunk = chunk_size(per_worker_batch)
        for samples in shard.iter_torch_batches(batch_size=chunk, collate_fn=builder, prefetch_batches=2,
                                                local_shuffle_buffer_size=max(4 * chunk, 20_000),
                                                local_shuffle_seed=tc.seed * 1000 + epoch * world + rank):
            for batch in split_batches(samples, per_worker_batch):
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                loss = optimizer_step(model, optimizer, batch, tc)
                loss_sum[:2] += torch.tensor([loss * len(batch[B.USER]), len(batch[B.USER])], dtype=torch.float64)
        loss_sum[2] = time.process_time() - cpu0
        if world > 1:
            torch.distributed.all_reduce(loss_sum)
        # cpu_seconds: user + system CPU of every worker process in the epoch (all its threads), summed.
        metrics = {"epoch": epoch, "loss": float(loss_sum[0] / max(loss_sum[1], 1)), "samples": int(loss_sum[1]),
                   "epoch_seconds": round(time.perf_counter() - t0, 3), "cpu_seconds": round(float(loss_sum[2]), 3)}
        stop = torch.zeros(1)
        if rank == 0:
            metrics.update(validate(core, seqs, val, schema.max_len, tc.val_k))
            history.append(metrics)
            stop[0] = float(_should_stop(history, tc))
            print(f"[train] epoch {epoch + 1}/{tc.epochs} loss {metrics['loss']:.4f} "
                  f"{tc.selection_metric} {metrics[tc.selection_metric]:.4f} "
                  f"({metrics['samples'] / metrics['epoch_seconds']:.0f} samples/s)"
                  + (" - early stop" if stop[0] else ""), flush=True)
            with tempfile.TemporaryDirectory() as d:
                write_checkpoint_dir(d, model_file(core, cfg), optimizer.state_dict(), epoch, history)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)
        if world > 1:  # rank 0 alone validates; every rank must leave the loop together
            torch.distributed.broadcast(stop, src=0)
        if stop[0]:
            break


def model_file(model: torch.nn.Module, cfg: PipelineConfig) -> ModelFile:
    """What a checkpoint and model/model.pt store of a (possibly DDP-wrapped) model."""
    model = getattr(model, "module", model)
    return ModelFile(cfg.model.name, cfg.model.embedding_dim, dict(cfg.model.params),
                     {k: v.detach().cpu() for k, v in model.state_dict().items()})


def _should_stop(history: list[dict], tc) -> bool:
    """Early stopping: no better selection metric in the last `early_stopping_patience` epochs."""
    if not tc.early_stopping_patience or len(history) <= tc.early_stopping_patience:
        return False
    values = [h[tc.selection_metric] for h in history]
    return max(values[-tc.early_stopping_patience:]) <= max(values[:-tc.early_stopping_patience])

