"""Exported towers: a trained run's user and item towers as ONNX files, to serve them without Ray or PyTorch.

    user_tower.onnx   the inputs the model's encode_user reads -> user_embedding [B, D] ([B, K, D] multi-interest)
    item_tower.onnx   item_id [B] -> item_embedding [B, D]
    export.json       each tower's inputs and output (name, dtype, shape, dynamic axes), the model and its
                      sizes, and where the vocabularies are (raw id of each dense id)

The batch axis is dynamic; a history is the run's `max_len` window, oldest first, right-padded with 0, as
`batch.user_batch` cuts it. Written by torch's TorchScript-based exporter
(`dynamo=False`): it traces every model (MIND's shape-dependent lookup of its behaviours included, which
torch.export refuses under a dynamic batch), leaves out the inputs a tower never reads, and is about ten
times faster. Each tower is checked against the PyTorch model on onnxruntime at batch sizes other than
the traced one before anything is written.
"""

from __future__ import annotations

import inspect
import io
import warnings

import numpy as np
import torch
from torch import nn

from ray_recall import batch as B
from ray_recall.errors import RayRecallError
from ray_recall.models import build_from_file, interests_of
from ray_recall.models.layers import length_mask
from ray_recall.rundir import EXPORT_FILES, RunDir

OPSET = 17
BATCH_AXIS = "batch"
OUTPUTS = {"user": "user_embedding", "item": "item_embedding"}
TRACE_ROWS = 3
CHECK_ROWS = (1, 7)
TOLERANCE = 1e-4
INPUT_DOCS = {
    B.USER: "dense user id (0 = a user the run does not know)",
    B.HIST: "item history (dense ids), oldest first, right-padded with 0",
    B.HIST_LEN: "number of real items in hist",
    B.HIST_TIME: "timestamp (seconds) of each hist item, 0 at padding",
    B.ITEM: "dense item id",
}
_TORCHSCRIPT = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


class _Tower(nn.Module):
    """One tower of a model as a function of positional tensors, in the order of `keys`."""

    def __init__(self, model: nn.Module, side: str, keys: list[str]):
        super().__init__()
        self.model, self.side, self.keys = model, side, tuple(keys)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        batch = dict(zip(self.keys, tensors))
        return self.model.encode_user(batch) if self.side == "user" else self.model.encode_item(batch)


def export_towers(run_dir: str, out: str | None = None) -> dict:
    """Export a trained run's towers to `out` (default <run>/export/): export.json's contents, with "out"."""
    run = RunDir(run_dir)
    run.verify_stages("export")
    model = build_from_file(run.read_model(), run.read_schema())
    with_time = "times" in run.read_parquet_schema("data", "sequences").names
    towers, info = export_model(model, with_time=with_time)
    info = {**info, "run_dir": run.uri, "vocabularies": run.vocabulary_files()}
    return {**info, "out": run.write_export(towers, info, out)}


def export_model(model: nn.Module, *, with_time: bool = False) -> tuple[dict[str, bytes], dict]:
    """A model's towers as ONNX files ({"user": bytes, "item": bytes}) and their description (export.json
    without the run's part). `with_time`: the user side may read HIST_TIME (sequences with timestamps)."""
    ort, onnx = _runtime()
    training = model.training
    model.eval()
    try:
        files, towers = {}, {}
        for side, inputs in probe_inputs(model, TRACE_ROWS, with_time).items():
            files[side] = _export_tower(onnx, model, side, inputs)
            session = ort.InferenceSession(files[side], providers=["CPUExecutionProvider"])
            _check(model, side, session, with_time)
            towers[side] = _describe(session, EXPORT_FILES[side])
    finally:
        model.train(training)
    return files, {"model": model.registry_name, "embedding_dim": model.embedding_dim,
                   "interests": interests_of(model),
                   "multi_interest": model.multi_interest, "normalized": model.normalize, "max_len": model.max_len,
                   "num_users": model.num_users, "num_items": model.num_items, "opset": OPSET, "towers": towers}


def probe_inputs(model: nn.Module, rows: int, with_time: bool, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """{"user": the user tower's batch, "item": the item tower's} of `rows` random rows, the first with a full
    history window, the others of random length (0 included)."""
    g = torch.Generator().manual_seed(seed)
    L = model.max_len
    hist_len = torch.randint(0, L + 1, (rows,), generator=g)
    hist_len[0] = L
    real = length_mask(hist_len, L)
    user = {B.USER: torch.randint(0, model.num_users + 1, (rows,), generator=g),
            B.HIST: torch.randint(1, model.num_items + 1, (rows, L), generator=g) * real, B.HIST_LEN: hist_len}
    if with_time:
        gaps = torch.rand(rows, L, generator=g, dtype=torch.float64) * 30 * 86400
        user[B.HIST_TIME] = (1.7e9 + gaps.cumsum(1)) * real
    return {"user": user, "item": {B.ITEM: torch.randint(1, model.num_items + 1, (rows,), generator=g)}}


def output_shape(model: nn.Module, side: str) -> list:
    """[batch, D], or [batch, K, D] for a multi-interest user tower."""
    middle = [model.num_interests] if side == "user" and model.multi_interest else []
    return [BATCH_AXIS, *middle, model.embedding_dim]


def summary(info: dict) -> str:
    """export.json in a few lines: each tower's file, inputs and output."""
    def arg(a):
        return f"{a['name']} {a['dtype']} [{', '.join(map(str, a['shape']))}]"

    lines = [f"{info['model']} towers (D={info['embedding_dim']}) in {info.get('out', '')}"]
    for t in info["towers"].values():
        lines.append(f"  {t['file']}: {', '.join(map(arg, t['inputs']))} -> {arg(t['output'])}")
    return "\n".join(lines)


def _export_tower(onnx, model: nn.Module, side: str, inputs: dict[str, torch.Tensor]) -> bytes:
    names, out = list(inputs), OUTPUTS[side]
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the window width is fixed; _check tests the batch
        warnings.simplefilter("ignore", DeprecationWarning)
        # GRU: "batch_size other than 1 ... can cause an error": _check runs the export at other batch sizes.
        warnings.filterwarnings("ignore", "Exporting a model to ONNX with a batch_size", UserWarning)
        torch.onnx.export(_Tower(model, side, names).eval(), tuple(inputs.values()), buf, input_names=names,
                          output_names=[out], dynamic_axes={n: {0: BATCH_AXIS} for n in names + [out]},
                          opset_version=OPSET, **_TORCHSCRIPT)
    proto = onnx.load_from_string(buf.getvalue())
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    for dim, size in zip(dims, output_shape(model, side)):
        if isinstance(size, int):
            dim.dim_value = size
    return proto.SerializeToString()


def _check(model: nn.Module, side: str, session, with_time: bool) -> None:
    encode = model.encode_user if side == "user" else model.encode_item
    for rows in CHECK_ROWS:
        inputs = probe_inputs(model, rows, with_time, seed=rows)[side]
        with torch.no_grad():
            want = encode(inputs).numpy()
        got = session.run(None, {a.name: inputs[a.name].numpy() for a in session.get_inputs()})[0]
        if got.shape != want.shape or not np.allclose(got, want, rtol=0, atol=TOLERANCE):
            diff = f"max |difference| {np.abs(got - want).max():.2g}" if got.shape == want.shape else f"shape {got.shape}"
            raise RayRecallError(f"{EXPORT_FILES[side]}: the exported {side} tower of {model.registry_name} does not "
                                 f"match the model at batch size {rows} ({diff}, expected {want.shape}); not written")


def _describe(session, file: str) -> dict:
    def arg(a, doc: bool):
        shape = list(a.shape)
        out = {"name": a.name, "dtype": _dtype(a.type), "shape": shape,
               "dynamic_axes": [i for i, d in enumerate(shape) if isinstance(d, str)]}
        return {**out, "description": INPUT_DOCS[a.name]} if doc else out

    (output,) = session.get_outputs()
    return {"file": file, "inputs": [arg(a, True) for a in session.get_inputs()], "output": arg(output, False)}


def _dtype(onnx_type: str) -> str:
    """onnxruntime's "tensor(int64)" -> "int64" (numpy's name: float32, float64)."""
    name = onnx_type.removeprefix("tensor(").removesuffix(")")
    return {"float": "float32", "double": "float64"}.get(name, name)


def _runtime():
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise RayRecallError(f"exporting towers needs onnx and onnxruntime ({e.name} is not installed): "
                             "pip install 'ray_recall[export]'") from None
    return onnxruntime, onnx
