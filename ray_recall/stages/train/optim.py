"""Optimizers: Adam for dense parameters, a row-wise lazy Adam for large id tables with sparse gradients.

An item table at a million items is most of a model's parameters, and a step touches a few thousand of
its rows. Lazy Adam updates only those rows (their moments and weights), as torch's SparseAdam does,
with the same arithmetic; `RowAdam` does it with fewer passes over memory, which is what the step costs
at that size (the rows are scattered over hundreds of MB): the gradient's rows are summed per id with
one `unique` + `index_add_` instead of a sparse coalesce, both moments of a row sit side by side in one
[rows, 2, D] tensor (one gather, one scatter-add), torch's fused Adam kernel updates them in one pass, and
its update is added to the weights' rows with one `index_add_` (no gather of the weights). Measured in
benchmarks/scale_train.md.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.optim.adam import adam

from ray_recall.stages.train.comm import all_gather_row_sets


def rows_of(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A sparse row gradient (an nn.Embedding's with sparse=True) -> (unique row ids [U], summed rows [U, D])."""
    if grad.is_coalesced():
        return grad._indices()[0], grad._values()
    return sum_rows(grad._indices()[0], grad._values())


def sum_rows(ids: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with repeated ids -> (unique ids [U], the sum of each id's rows [U, ...])."""
    unique, inverse = torch.unique(ids, return_inverse=True)
    summed = values.new_zeros((len(unique), *values.shape[1:]))
    summed.index_add_(0, inverse, values)
    return unique, summed


def mean_rows_over_workers(tables: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each worker's (unique ids, rows) of every table -> every worker's mean gradient rows of each (a row no
    worker has is 0).

    What DDP's all-reduce does for a dense gradient, for a sparse one: each worker sends the rows it
    touched, and every worker sums them per id and divides by the number of workers. Workers' rows are
    summed per id before they are sent, so the exchange is (unique rows touched) x workers, not
    (lookups) x workers as DDP's sparse all-reduce; and every table goes in one exchange
    (`all_gather_row_sets`: two collectives per step, not three per table).
    """
    gathered, _ = all_gather_row_sets(tables)
    world = dist.get_world_size()
    out = []
    for all_ids, all_values in gathered:
        ids, values = sum_rows(all_ids, all_values)
        out.append((ids, values.div_(world)))
    return out


class RowAdam(torch.optim.Optimizer):
    """Lazy Adam for parameters whose gradients are sparse in their rows: torch.optim.SparseAdam's update.

    Per parameter: one step count (bias correction as SparseAdam's), and the first and second moments of
    every row in `moments` [rows, 2, ...]; a row's moments and weights change only on the steps whose
    gradient touches it. Loads a SparseAdam state dict too (checkpoints written before this class).

    `average_over_workers`: the gradients are this worker's own (DDP told to ignore these parameters) and
    the step first averages them over every worker (`mean_rows_over_workers`); every worker must step.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 average_over_workers: bool = False):
        if lr <= 0 or eps <= 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"RowAdam: invalid lr={lr}, betas={betas} or eps={eps}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self.average_over_workers = average_over_workers

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        synced = self.average_over_workers and dist.is_initialized() and dist.get_world_size() > 1
        todo = []  # (group, parameter, unique row ids, summed gradient rows)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None and not synced:
                    continue
                if p.grad is not None and not p.grad.is_sparse:
                    raise RuntimeError("RowAdam takes sparse row gradients (nn.Embedding(sparse=True)); "
                                       "use torch.optim.Adam for dense ones")
                if p.grad is None:  # this worker touched no row, the others may have
                    ids, g = torch.zeros(0, dtype=torch.long, device=p.device), p.new_zeros((0, *p.shape[1:]))
                else:
                    ids, g = rows_of(p.grad)
                todo.append((group, p, ids, g))
        if synced and todo:
            averaged = mean_rows_over_workers([(ids, g) for _, _, ids, g in todo])
            todo = [(group, p, ids, g) for (group, p, _, _), (ids, g) in zip(todo, averaged)]
        for group, p, ids, g in todo:
            beta1, beta2 = group["betas"]
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["moments"] = torch.zeros((p.shape[0], 2, *p.shape[1:]), dtype=p.dtype, device=p.device)
            state["step"] += 1
            step = float(state["step"])
            if not len(ids):
                continue
            moments = state["moments"].index_select(0, ids)  # [U, 2, D]
            m, v, update = moments[:, 0].contiguous(), moments[:, 1].contiguous(), torch.zeros_like(g)
            # torch's fused Adam kernel, one pass over the gathered rows (it reads its tensors as contiguous). Its
            # "parameter" is zeros, so it leaves there the update itself, which is added to the rows as SparseAdam
            # adds its sparse one: no gather of the weights. It is handed the step before this one and adds one.
            # SparseAdam adds eps to sqrt(v) before the bias correction and Adam after it: eps / sqrt(1 - beta2^step)
            # makes Adam's update SparseAdam's.
            adam([update], [g.contiguous()], [m], [v], [], [torch.tensor(step - 1, device=p.device)], fused=True,
                 amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=0.0,
                 eps=group["eps"] / math.sqrt(1 - beta2 ** step), maximize=False)
            # Rows written back as the change to them: index_add_ moves whole rows, index_copy_ checks every element
            # (6k of 873k rows: 2.1-3.0 against 3.2-3.5 ms, benchmarks/scale_train.md).
            state["moments"].index_add_(0, ids, torch.stack((m, v), 1).sub_(moments))
            p.index_add_(0, ids, update)
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = {**state_dict, "state": {k: _from_sparse_adam(s) for k, s in state_dict["state"].items()}}
        super().load_state_dict(state_dict)


def _from_sparse_adam(s: dict) -> dict:
    """A torch.optim.SparseAdam parameter state -> RowAdam's (the same moments, side by side)."""
    if "exp_avg" not in s:
        return s
    return {"step": torch.as_tensor(s["step"], dtype=torch.float32),
            "moments": torch.stack([s["exp_avg"], s["exp_avg_sq"]], dim=1)}


class Optimizers:
    """Adam for the dense parameters, RowAdam (lazy: only the rows a step touched) for sparse id tables."""

    def __init__(self, model: torch.nn.Module, tc, sparse_min_rows: int | None):
        """tc: the TrainConfig (lr, weight_decay); id tables of at least `sparse_min_rows` rows (None: none) go sparse."""
        sparse, self.sparse_names = [], []
        if sparse_min_rows is not None and getattr(model, "sparse_safe", False):
            for name, module in model.named_modules():
                if isinstance(module, torch.nn.Embedding) and module.num_embeddings >= sparse_min_rows:
                    module.sparse = True
                    sparse.append(module.weight)
                    self.sparse_names.append(f"{name}.weight")
        ids = {id(p) for p in sparse}
        dense = [p for p in model.parameters() if id(p) not in ids]
        # fused: one kernel over every parameter (CPU and CUDA), 0.5 ms a step for SASRec's 161k parameters
        # against 1.9-3.1 ms for the per-operation default (benchmarks/scale_train.md)
        self.dense = torch.optim.Adam(dense, lr=tc.lr, weight_decay=tc.weight_decay, fused=True)
        self.sparse = RowAdam(sparse, lr=tc.lr) if sparse else None
        self.sparse_rows = sum(p.shape[0] for p in sparse)

    def sync_sparse_myself(self, model: torch.nn.Module) -> None:
        """Before DDP wraps `model`: DDP leaves the sparse tables alone and RowAdam averages their gradients.

        DDP's own all-reduce of a sparse gradient all-gathers every lookup of every worker (uncoalesced); RowAdam
        sends each worker's touched rows once (`mean_rows_over_workers`). The tables start equal on every worker
        from rank 0's copy, as DDP does for the parameters it syncs.
        """
        if self.sparse is None or not dist.is_initialized() or dist.get_world_size() == 1:
            return
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, self.sparse_names)
        self.sparse.average_over_workers = True
        with torch.no_grad():
            for group in self.sparse.param_groups:
                for p in group["params"]:
                    dist.broadcast(p, src=0)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        if self.sparse is not None:
            self.sparse.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.dense.step()
        if self.sparse is not None:
            self.sparse.step()

    def state_dict(self) -> dict:
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict() if self.sparse else None}

    def load_state_dict(self, state: dict) -> None:
        if "dense" not in state:  # a checkpoint from a single Adam
            self.dense.load_state_dict(state)
            return
        self.dense.load_state_dict(state["dense"])
        if self.sparse is not None and state.get("sparse") is not None:
            self.sparse.load_state_dict(state["sparse"])
