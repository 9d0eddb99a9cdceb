"""A test hook: SIGKILL this process at a named point of a stage's write path.

    RAY_RECALL_FAULT=<stage>:<point>     e.g. embed:written

tests/test_faults.py uses it to land a kill exactly between a stage writing its outputs and the manifest
recording them, which a small run passes too quickly to hit from outside. Unset, as it always is outside
those tests, nothing happens. Points:

    staged    the stage's directory is complete under its temporary name, not yet moved into place
    copying   (object stores) part of that directory has been copied into place
    written   the stage has returned: its outputs are in place, the manifest does not record it yet
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import signal
import sys

ENV = "RAY_RECALL_FAULT"
_stage: contextvars.ContextVar[str | None] = contextvars.ContextVar("ray_recall_stage", default=None)


@contextlib.contextmanager
def in_stage(name: str):
    """Points reached inside the block belong to stage `name`."""
    token = _stage.set(name)
    try:
        yield
    finally:
        _stage.reset(token)


def armed(point: str) -> bool:
    stage = _stage.get()
    return stage is not None and os.environ.get(ENV) == f"{stage}:{point}"


def point(name: str) -> None:
    """Kill this process (SIGKILL: no cleanup, no exit handlers) if RAY_RECALL_FAULT names this stage and point."""
    if armed(name):
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
