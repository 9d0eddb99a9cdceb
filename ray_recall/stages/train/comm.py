"""Gradient averaging for small models on CPU: pairwise exchanges instead of gloo's ring all-reduce.

The recall models here have small gradients (MIND on MovieLens-100K: 27k floats, 108 KB), so DDP
syncs them as one bucket per step and the cost is latency, not bandwidth. Measured on a 2-core
machine (benchmarks/train.md), gloo's all-reduce of 27k floats between two processes takes
0.6-1.3 ms; sending each other the buffer and adding takes 0.1-0.2 ms. With W = 2^k workers,
recursive doubling does that k times (partner = rank XOR 2^i) and leaves every rank with the same
bits: each step adds the same two partial sums, in either order, and float addition commutes.

Which one a run uses is `train.grad_sync`: "allreduce" (DDP's own), "exchange" (this hook; a
config error where it cannot apply), or "auto" (the hook where it applies, DDP's all-reduce
elsewhere). The training log names the choice and why.
"""

import math

import torch
import torch.distributed as dist

from ray_recall.errors import ConfigError

# Above this many gradient bytes, DDP splits gradients into several buckets and overlaps their
# all-reduce with the rest of backward; a blocking exchange would undo that, so keep DDP's default.
SMALL_GRADIENT_BYTES = 1 << 20  # DDP's first bucket


def exchange_mean_(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """`tensor` (in place) -> its mean over the ranks of `group`, by recursive doubling; 2^k ranks."""
    group = group or dist.group.WORLD
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    total = tensor.div_(world)
    other = torch.empty_like(total)
    step = 1
    while step < world:
        partner = dist.get_global_rank(group, rank ^ step)
        requests = [dist.isend(total, partner, group=group), dist.irecv(other, partner, group=group)]
        for r in requests:
            r.wait()
        total.add_(other)
        step *= 2
    return total


def exchange_allreduce_hook(process_group, bucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: the bucket's mean by `exchange_mean_` (blocking: one bucket, at the end)."""
    done = torch.futures.Future()
    done.set_result(exchange_mean_(bucket.buffer(), process_group))
    return done


def exchange_unsuitable(model: torch.nn.Module) -> str | None:
    """Why `exchange_allreduce_hook` does not suit this DDP run (None if it does: gloo, 2^k ranks, one bucket)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return "a single worker"
    if dist.get_backend() != "gloo":
        return f"the {dist.get_backend()} backend"
    world = dist.get_world_size()
    if world & (world - 1):
        return f"{world} workers, not a power of two"
    ignored = getattr(model, "parameters_to_ignore", set())  # DDP's: synced elsewhere (sparse id tables)
    module = getattr(model, "module", model)
    if any(getattr(m, "sparse", False) and f"{n}.weight" not in ignored for n, m in module.named_modules()):
        return "sparse gradients (id tables)"
    grad_bytes = synced_gradient_bytes(model)
    if grad_bytes > SMALL_GRADIENT_BYTES:
        return f"{grad_bytes / 2**20:.1f} MiB of gradients, more than one DDP bucket"
    return None


def setup_grad_sync(ddp_model: torch.nn.Module, grad_sync: str) -> str:
    """Apply `train.grad_sync` to a DDP-wrapped model; returns a line saying how gradients are averaged."""
    if grad_sync == "allreduce" or not dist.is_initialized() or dist.get_world_size() == 1:
        return "gradients averaged by DDP's all-reduce" if dist.is_initialized() and dist.get_world_size() > 1 else ""
    reason = exchange_unsuitable(ddp_model)
    if reason is None:
        ddp_model.register_comm_hook(None, exchange_allreduce_hook)
        size = synced_gradient_bytes(ddp_model)
        return f"gradients ({size / 1024:.0f} KiB) averaged by pairwise exchange (train.grad_sync={grad_sync})"
    if grad_sync == "exchange":
        raise ConfigError(f"train.grad_sync='exchange' cannot apply to this run ({reason}); use 'allreduce' or 'auto'")
    return f"gradients averaged by DDP's all-reduce (train.grad_sync=auto: {reason})"


def all_gather_rows(*tensors: torch.Tensor) -> tuple[list[torch.Tensor], list[int]]:
    """Tensors with the same number of rows n_r on each rank -> ([sum n_r, ...] each, in rank order), [n_r per rank].

    Not differentiable (see `gather_rows`). One set of `all_gather_row_sets`.
    """
    (out,), sizes = all_gather_row_sets([tensors])
    return out, [s[0] for s in sizes]


def all_gather_row_sets(sets: list[tuple[torch.Tensor, ...]]) -> tuple[list[list[torch.Tensor]], list[list[int]]]:
    """Sets of tensors (the tensors of a set have the same number of rows on a rank; sets may differ) ->
    (for each set, its tensors with every rank's rows concatenated in rank order), sizes[rank][set].

    Two collectives whatever the number of sets and tensors: one exchange of the row counts, then one
    all-gather of every tensor's bytes packed into one buffer (padded to the most bytes any rank has).
    Each collective costs about a millisecond of latency on gloo, which is what a step of a few
    milliseconds with two sparse tables (ids and rows each) noticed. Not differentiable.
    """
    world = dist.get_world_size()
    device = sets[0][0].device
    counts = torch.tensor([ts[0].shape[0] for ts in sets], device=device)
    gathered = [torch.zeros_like(counts) for _ in range(world)]
    dist.all_gather(gathered, counts)
    sizes = torch.stack(gathered).tolist()  # [world][sets]
    row_bytes = [[math.prod(t.shape[1:]) * t.element_size() for t in ts] for ts in sets]
    totals = [sum(n * b for n, bs in zip(sizes[r], row_bytes) for b in bs) for r in range(world)]
    local = [t.contiguous().reshape(-1).view(torch.uint8) for ts in sets for t in ts]
    padded = torch.zeros(max(totals), dtype=torch.uint8, device=device)
    if local:
        flat = torch.cat(local)
        padded[:len(flat)] = flat
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = [[[] for _ in ts] for ts in sets]
    for r, buf in enumerate(parts):
        at = 0
        for i, ts in enumerate(sets):
            for k, t in enumerate(ts):
                n = sizes[r][i] * row_bytes[i][k]
                out[i][k].append(buf[at:at + n].clone().view(t.dtype).reshape(sizes[r][i], *t.shape[1:]))
                at += n
    return [[torch.cat(chunks) for chunks in per_set] for per_set in out], sizes


def synced_gradient_bytes(ddp_model: torch.nn.Module) -> int:
    """Bytes of the gradients DDP averages: the parameters it was not told to ignore (sparse id tables synced elsewhere)."""
    ignored = getattr(ddp_model, "parameters_to_ignore", set())
    module = getattr(ddp_model, "module", ddp_model)
    return sum(p.numel() * p.element_size() for n, p in module.named_parameters() if p.requires_grad and n not in ignored)


class _GatherRows(torch.autograd.Function):
    """All-gather of a tensor's rows over the process group (ranks may hold different numbers of rows).

    Backward sums every rank's gradient for this rank's rows (an all-reduce, then this rank's slice), so that
    with DDP's gradient averaging the update equals that of the mean loss over the global batch.
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        (out,), sizes = all_gather_rows(t)
        ctx.sizes, ctx.rank, ctx.most = sizes, dist.get_rank(), max(sizes)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        sizes, rank, most = ctx.sizes, ctx.rank, ctx.most
        padded = grad.new_zeros((len(sizes) * most, *grad.shape[1:]))
        start = 0
        for r, n in enumerate(sizes):
            padded[r * most: r * most + n] = grad[start:start + n]
            start += n
        dist.all_reduce(padded)
        return padded[rank * most: rank * most + sizes[rank]]


def gather_rows(t: torch.Tensor) -> torch.Tensor:
    """`t` [n_r, ...] on every rank -> [sum n_r, ...] in rank order; differentiable for floating tensors."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    if t.is_floating_point():
        return _GatherRows.apply(t)
    return all_gather_rows(t)[0][0]  # ids: no gradient

