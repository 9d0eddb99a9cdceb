"""Saving and loading a trained model: one file with the model name, hyperparameters and state dict."""

from __future__ import annotations

import io

import torch

from ray_recall.models import build_model
from ray_recall.storage import RunDir


def model_payload(model: torch.nn.Module, name: str, embedding_dim: int, params: dict) -> dict:
    model = getattr(model, "module", model)  # unwrap DDP
    return {"name": name, "embedding_dim": embedding_dim, "params": dict(params),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}


def model_from_payload(payload: dict, schema) -> torch.nn.Module:
    model = build_model(payload["name"], schema, payload["embedding_dim"], payload["params"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def save_payload(payload: dict, run: RunDir, *parts: str) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    run.write_bytes(buf.getvalue(), *parts)


def load_payload(run: RunDir, *parts: str) -> dict:
    return torch.load(io.BytesIO(run.read_bytes(*parts)), map_location="cpu", weights_only=False)


def load_run_model(run: RunDir):
    """(model in eval mode, schema) from <run>/model/model.pt."""
    from ray_recall.data.preprocess import load_schema
    from ray_recall.errors import DataError

    if not run.exists("model", "model.pt"):
        raise DataError(f"{run.uri}: no trained model (model/model.pt); run the train stage first")
    schema = load_schema(run)
    return model_from_payload(load_payload(run, "model", "model.pt"), schema), schema
