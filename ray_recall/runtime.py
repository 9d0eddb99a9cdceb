"""Joining or starting Ray, with the project's settings: quiet Ray logs, Ray Data errors that keep their type,
and a Ray started here reachable from this machine only."""

from __future__ import annotations

import contextlib
import logging
import os
import queue as _queue
import sys
import threading
import time
import warnings

import ray

VERBOSE_ENV = "RAY_RECALL_VERBOSE"  # 1: Ray's own logs and every worker's output on the console too


# glibc's M_MMAP_THRESHOLD (mallopt parameter -3).
_M_MMAP_THRESHOLD = -3


def bound_heap_growth(threshold: int = 128 * 1024) -> bool:
    """Keep this process's heap from growing batch after batch (glibc only; elsewhere a no-op, False).

    glibc raises its mmap threshold each time a large block is freed (up to 32 MB); blocks of that size then
    come from the heap, which fragments and is rarely given back. In a long-lived actor that runs a
    transformer over batch after batch the heap grew by ~60 MB per batch (SASRec user embedding: 1.2 GiB
    private after 20 batches; 0.4 with a fixed threshold). A fixed threshold keeps large tensors in their
    own mappings, returned to the system when freed. Called by the actors that embed, evaluate and serve.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


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
    # Off a terminal Ray Data logs its progress at INFO instead of drawing bars (hidden above); with the bars
    # off, it warns once that they are off.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    if quiet:
        ctx.enable_progress_bars = False


# Libraries whose warnings are about their own internals (a deprecated setting Ray sets itself, SQLAlchemy
# under MLflow's store): nothing a user of this project can act on.
_QUIET_MODULES = r"(ray|mlflow|torch|sqlalchemy|alembic|pydantic|pyarrow|pandas|numpy|faiss)(\.|$)"


def quiet_library_warnings() -> None:
    """Hide deprecation, future and user warnings raised inside the libraries underneath (the CLI does this
    unless --verbose); warnings of the project's own code and of the user's still show."""
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=_QUIET_MODULES)


def verbose() -> bool:
    """Whether RAY_RECALL_VERBOSE (the CLI's --verbose) asks for Ray's own logs and workers' output too."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


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


_STARTED_HERE = False  # whether init_ray started the Ray in use (a single node, in this process)


def started_here() -> bool:
    """Whether the Ray in use was started by `init_ray` in this process (and stops with it)."""
    return _STARTED_HERE and ray.is_initialized()


def map_on_actors(ds, fn, **kwargs):
    """`ds.map_batches(fn, **kwargs)` for the project's Ray Data actor pools (embedding, evaluation).

    On a cluster, Ray Data's defaults: an actor lost with its node is restarted elsewhere and its batches
    retried. On the single node started here there is no other node to restart on, and Ray 2.60's core
    logs an error line on the console for each pool whose actors may restart ("has constructor arguments
    in the object store and max_restarts > 0"): restarts are off, and a crashed actor fails the stage,
    which a re-run redoes. Ray 2.60 has no named parameter for it yet (its remote-args function is
    deprecated for Ray 2.64; that warning is ours to silence, not the user's to read).
    """
    if not started_here():
        return ds.map_batches(fn, **kwargs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`ray_remote_args_fn` is deprecated")
        return ds.map_batches(fn, ray_remote_args_fn=_no_actor_restarts, **kwargs)


def _no_actor_restarts() -> dict:
    return {"max_restarts": 0, "max_task_retries": 0}


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
        # The console shows the project's own lines: workers' output is not forwarded (what a stage's workers
        # mean for the console reaches it through `worker_lines`) and Ray logs errors only, unless verbose.
        loud = verbose() and not quiet
        kwargs = dict(logging_level="INFO" if loud else "ERROR", log_to_driver=loud)
        global _STARTED_HERE
        _STARTED_HERE = False
        if address:
            ray.init(address=address, **kwargs)
        else:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            # A fit starts a handful of Ray's own actors (controller, data, placement, synchronization) beside
            # its workers: on a small machine that is several times as many processes as CPUs, which the
            # raylet would report as a startup storm on the console. They are few and short-lived.
            os.environ.setdefault("RAY_worker_maximum_startup_concurrency", "16")
            with loopback_only():
                ray.init(address="local", num_cpus=num_cpus, **kwargs)
            _STARTED_HERE = True
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


PLAIN_PROGRESS_S = 60.0  # off a terminal, a worker's progress is a line of its own at most this often


@contextlib.contextmanager
def worker_lines(log, enabled: bool = True):
    """A sink for what a worker means for the console (hand it to the worker, which calls `emit(sink, line)` and
    `emit_progress(sink, ...)`), shown here as it arrives and in order: lines through `log`, progress as a
    bar redrawn in place when stderr is a terminal, else, once an epoch has run `PLAIN_PROGRESS_S`, as a line through
    `log` at most that often (a log file or `ray job logs` then shows a long epoch moving). None when not enabled.

    Workers' output is not forwarded to the driver (see `init_ray`): this is how a training worker's
    per-epoch line reaches the console, once, between the driver's own lines.
    """
    if not enabled:
        yield None
        return
    from ray.util.queue import Queue

    sink = Queue(actor_options={"num_cpus": 0})
    done = threading.Event()
    bar = _Bar(sys.stderr) if sys.stderr.isatty() else _Lines(log, PLAIN_PROGRESS_S)

    def drain() -> None:
        while True:
            try:
                items = sink.get_nowait_batch(sink.qsize()) if sink.qsize() else []
            except (_queue.Empty, ray.exceptions.RayError):
                return
            if not items:
                return
            for item in items:
                if isinstance(item, dict):
                    if bar:
                        bar.draw(**item)
                    continue
                if bar:
                    bar.clear()
                log(item)

    def pump() -> None:
        while not done.wait(0.2):
            drain()

    thread = threading.Thread(target=pump, name="worker-lines", daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        done.set()
        thread.join()
        drain()
        if bar:
            bar.clear()
        sink.shutdown()


class _Lines:
    """Progress where nothing can be redrawn (a file, a pipe): for work that has run `every` seconds or more under one
    label, a line at most every `every` seconds (this process's clock), with the time left at the rate seen since
    the label's first report (the reporter's clock, `at`)."""

    def __init__(self, log, every: float):
        self.log, self.every, self.last = log, every, time.monotonic()
        self.first: dict[str, tuple[float, int]] = {}  # label -> (at, done) of its first report

    def draw(self, label: str, done: int, total: int, unit: str = "", at: float | None = None) -> None:
        at = time.time() if at is None else at
        t0, done0 = self.first.setdefault(label, (at, done))
        if time.monotonic() - self.last < self.every or at - t0 < self.every:  # only what runs longer than `every`
            return
        self.last = time.monotonic()
        line = f"{label}: {done:,} of {total:,} {unit}".rstrip()
        if total > 0:
            line += f" ({100 * min(1.0, done / total):.0f}%)"
            if done0 < done < total:
                left = (total - done) * (at - t0) / (done - done0)
                line += f", about {left / 60:.0f} min left" if left >= 90 else f", about {left:.0f} s left"
        self.log(line)

    def clear(self) -> None:
        pass


class _Bar:
    """One progress line on a terminal, redrawn in place."""

    def __init__(self, stream):
        self.stream, self.shown = stream, False

    def draw(self, label: str, done: int, total: int, unit: str = "", at: float | None = None) -> None:
        frac = min(1.0, done / total) if total > 0 else 0.0
        filled = int(round(30 * frac))
        self.stream.write(f"\r\033[K{label} [{'#' * filled}{'.' * (30 - filled)}] {100 * frac:3.0f}% "
                          f"{done:,}/{total:,} {unit}")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


def emit(sink, line: str) -> None:
    """A worker's line for the console: through `worker_lines`' sink, or printed where there is none."""
    if sink is not None:
        try:
            sink.put(line, timeout=10)
            return
        except Exception:  # the driver's queue is gone: print it rather than fail training over a line
            pass
    print(line, flush=True)


def emit_progress(sink, label: str, done: int, total: int, unit: str = "") -> None:
    """A worker's progress (`done` of `total`) for the driver's bar; nothing where there is no sink."""
    if sink is not None:
        with contextlib.suppress(Exception):
            sink.put_nowait({"label": label, "done": int(done), "total": int(total), "unit": unit, "at": time.time()})
