"""Serving: `Recaller` holds the logic; `app` wraps it as a Ray Serve HTTP application."""

from ray_recall.serve.recaller import InvalidQueryError, Query, Recaller, UnknownUserError

__all__ = ["InvalidQueryError", "Query", "Recaller", "UnknownUserError"]
