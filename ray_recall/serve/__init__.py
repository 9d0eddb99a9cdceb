"""Serving: `Recaller` holds the logic; `app` wraps it as a Ray Serve HTTP application."""

from ray_recall.serve.recaller import Recaller, UnknownUserError

__all__ = ["Recaller", "UnknownUserError"]
