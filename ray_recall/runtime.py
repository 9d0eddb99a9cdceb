"""Joining or starting Ray, with the project's settings: quiet Ray logs, Ray Data errors that keep their type,
and a Ray started here reachable from this machine only."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
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


# Ray 2.60 on Linux takes the node IP from the route to the outside world and replaces a node IP of 127.0.0.1
# (`ray.init(_node_ip_address=...)`, `ray start --node-ip-address`) by that address; its gRPC servers
# (GCS, raylet, object manager, every worker) then listen on all interfaces and the agents on that
# address. With this variable at 0 Ray keeps to its single-machine mode (the default on macOS and
# Windows): the node IP is 127.0.0.1 and every server binds it. Such a node cannot be joined by others:
# `ray start --address` refuses to start a worker node under it.
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def loopback_only():
    """Within the block, a Ray started here (`ray.init(address="local")`) binds its ports to 127.0.0.1 only.

    Ray reads LOCAL_ONLY_ENV once, when it is imported, so the constant it was read into is set as well;
    the processes the new node starts inherit the variable. Both are restored on leaving, so that a later
    `ray.init(address=<cluster>)` in this process sees the machine's own address again.
    """
    from ray._private import ray_constants

    saved_env, saved = os.environ.get(LOCAL_ONLY_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOCAL_ONLY_ENV], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(LOCAL_ONLY_ENV, None)
        else:
            os.environ[LOCAL_ONLY_ENV] = saved_env


def init_ray(num_cpus: int | None = None, quiet: bool = False) -> None:
    """Join the cluster named by RAY_ADDRESS (as under `ray job submit`), else start a local Ray in-process,
    listening on 127.0.0.1 only (`loopback_only`)."""
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        if not sys.stdout.isatty():
            # Ray colours the "(ProxyActor pid=...)" prefix of the worker lines it prints here: raw escape
            # codes in a log file or a pipe. Read at each print, so setting it here is enough.
            os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        address = os.environ.get("RAY_ADDRESS")
        kwargs = dict(logging_level="ERROR", log_to_driver=not quiet)
        if address:
            ray.init(address=address, **kwargs)
        else:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            with loopback_only():
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
