"""Joining or starting Ray, with the project's settings: quiet Ray logs, Ray Data errors that keep their type."""

from __future__ import annotations

import logging
import os
import warnings

import ray


def configure_ray_data(quiet: bool = False) -> None:
    """The Ray Data settings every stage relies on, for the current DataContext.

    A function mapped over blocks that raises (a `DataError` naming a bad row, say) reaches the driver
    as that exception (wrapped in Ray's RayTaskError, which keeps its type and holds it as `.cause`),
    not as a generic UserCodeException whose cause is lost on the way back.
    """
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.raise_original_map_exception = True
    ctx.print_on_execution_start = False
    # Ray Data logs every execution plan at INFO; the stages print their own one-line progress.
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    # Ray Train's own dataset config sets the deprecated ExecutionOptions.exclude_resources on every fit
    # (Ray 2.60): nothing of ours to change, and two lines of noise per fit on the console.
    warnings.filterwarnings("ignore", message=r"`ExecutionOptions\.exclude_resources` is deprecated")
    if quiet:
        ctx.enable_progress_bars = False


def init_ray(num_cpus: int | None = None, quiet: bool = False) -> None:
    """Join the cluster named by RAY_ADDRESS (as under `ray job submit`), else start a local Ray in-process."""
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        address = os.environ.get("RAY_ADDRESS")
        kwargs = dict(logging_level="ERROR", log_to_driver=not quiet)
        if address:
            ray.init(address=address, **kwargs)
        else:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(address="local", num_cpus=num_cpus, **kwargs)
    configure_ray_data(quiet)


def unwrap_error(e: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of one of `kinds` in e's chain: itself, Ray's `.cause`, `__cause__`, `__context__`."""
    cur, seen = e, set()
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, kinds) and not isinstance(cur, ray.exceptions.RayError):
            return cur
        cause = getattr(cur, "cause", None)
        cur = cause if isinstance(cause, BaseException) else (cur.__cause__ or cur.__context__)
    return None
