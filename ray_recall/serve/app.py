"""The Ray Serve recall endpoint: a thin HTTP adapter around `Recaller`.

    POST /recall   {"user_id": 1, "k": 10, "exclude_seen": true, "exclude": [50]}
                   {"history": [50, 172, 133], "k": 10}      (original item ids, oldest first)
                   -> 200 {"user_id": 1 | null, "items": [{"item_id": 50, "score": 0.93, "title": "..."}, ...],
                           "unknown_items": [...], "batch_size": 3}
                   -> 404 {"detail": "unknown user_id 123: not in this run's users"}
                   -> 422 {"detail": [{"type": ..., "loc": [...], "msg": ..., "input": ...}, ...]}  (bad body or query)
    GET  /healthz  -> 200 {"status": "ok", "run": ..., "model": ..., "index": ..., "items": ..., "users": ..., ...}

Concurrent requests are answered in batches (`@serve.batch`): one user-tower pass over the batch's
histories and one FAISS search for all of its vectors; `batch_size` says how many requests shared it.
The run is the deployment's `user_config` ({"run_dir": ...}): changing it (`serve deploy` of a config
whose `user_config.run_dir` changed) makes every replica load the new run completely, then swap it in;
requests in flight finish on the old one, none fails. A run that fails to load is never swapped in
(healthz then shows `reload_error`).

Start it with `ray-recall serve --run-dir runs/x`, `python jobs/serve.py --run-dir runs/x`,
`serve run ray_recall.serve.app:app_builder run_dir=runs/x`, or a Serve config file whose
`import_path` is `ray_recall.serve.app:app_builder` with `args: {run_dir: ..., replicas: ...}` (see `ServeSettings`).
"""

import asyncio
import json
import logging
import os
import signal
import threading
from typing import Literal, Optional, Union

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, model_validator
from ray import serve

from ray_recall.runtime import init_ray
from ray_recall.serve.recaller import InvalidQueryError, Query, Recaller, UnknownUserError

APP_NAME = "ray_recall"
MAX_K = 1000
MAX_EXCLUDE = 10_000


class ServeSettings(BaseModel):
    """The endpoint's build arguments (`app_builder` / `build_app`), defaults and checks in one place.

    Values given on the `serve run ... key=value` command line arrive as strings and are converted.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    run_dir: Optional[str] = None
    """the run to serve (absolute path or URI); becomes the deployment's user_config {"run_dir": ...}"""
    replicas: int = Field(1, ge=1)
    """replica count (a Serve config's num_replicas / autoscaling_config overrides it)"""
    max_batch_size: int = Field(16, ge=1)
    """most requests answered by one user-tower pass and one index search"""
    batch_wait_timeout_s: float = Field(0.0, ge=0)
    """how long the first request of a batch waits for others. 0: a batch is every request already waiting,
    so a lone request waits for nothing, while under load the requests that queue up while the replica is busy
    still share a pass (`benchmarks/serve_bench.py --batch-wait-timeout-s 0 0.001 0.005` compares them)"""
    unknown_items: Literal["ignore", "error"] = "ignore"
    """history items outside the run: "ignore" (reported in the answer) or "error" (a 422)"""
    max_history: int = Field(1000, ge=1)
    """the longest history accepted, in items"""

    @classmethod
    def parse(cls, values: dict, where: str) -> "ServeSettings":
        try:
            return cls(**values)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'args'}: {err['msg']} (got {err.get('input')!r})"
                                 if err["type"] != "extra_forbidden" else
                                 f"no argument {err['loc'][0]!r}; accepted: {list(cls.model_fields)}"
                                 for err in e.errors())
            raise ValueError(f"{where}: {problems}") from None

    def replica_args(self) -> dict:
        """What each replica's constructor takes: the settings that are not the run or the replica count."""
        return self.model_dump(exclude={"run_dir", "replicas"})


BUILD_ARGS = {name: field.default for name, field in ServeSettings.model_fields.items()}

# Original ids are ints or strings. Strict types so that JSON true, 1.5 or null is a 422
# rather than silently becoming user 1 or "None".
UserId = Union[StrictInt, StrictStr]


class RecallRequest(BaseModel):
    """Body of POST /recall. Unknown keys are rejected, so a misspelt "topk" is a 422, not a silent default."""

    model_config = ConfigDict(extra="forbid")

    # Defaults are None but an explicit null is still a 422: Pydantic does not validate defaults.
    user_id: UserId = Field(None, description="original user id, as in the interaction log (or give history)")
    history: list[UserId] = Field(None, description="original item ids, oldest first, for a user the run need "
                                                    "not know (or give user_id)")
    k: StrictInt = Field(10, ge=1, le=MAX_K, description="number of items to return")
    exclude_seen: StrictBool = Field(True, description="drop the user's known items, or the history's items")
    exclude: list[UserId] = Field(default_factory=list, max_length=MAX_EXCLUDE,
                                  description="original item ids never returned")

    @model_validator(mode="after")
    def _one_of_user_or_history(self):
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give exactly one of user_id (a user of this run) or history (original item ids, "
                             "oldest first)")
        return self


class RecalledItem(BaseModel):
    item_id: UserId = Field(description="original item id")
    score: float
    title: str


class RecallResponse(BaseModel):
    user_id: Optional[UserId] = Field(description="as sent; null for a history query")
    items: list[RecalledItem]
    unknown_items: list[UserId] = Field(description="history items not in the run, ignored (as sent)")
    batch_size: int = Field(description="requests answered together with this one (one model pass, one search)")


fastapi_app = FastAPI(title="ray_recall", description="Top-K recall for the users of a trained run, or for a history.")


# Defined before the deployment: Serve pickles the class when it is decorated, with the globals it sees then.
def _run_dir_of(user_config) -> str:
    if not isinstance(user_config, dict) or set(user_config) != {"run_dir"} or not isinstance(user_config["run_dir"], str):
        raise ValueError(f"RecallDeployment's user_config must be {{\"run_dir\": <run directory>}}, got {user_config!r}")
    run_dir = user_config["run_dir"]
    if "://" in run_dir:
        return run_dir
    if not os.path.isabs(run_dir):
        raise ValueError(f"user_config run_dir {run_dir!r} must be an absolute path or a URI: replicas do not run "
                         "in your working directory")
    return os.path.normpath(run_dir)  # as RunDir names it, to tell whether it is already loaded


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
@serve.ingress(fastapi_app)
class RecallDeployment:
    """One replica: loads the run named by its user_config, then answers requests from memory in batches."""

    def __init__(self, **settings):
        import torch

        # Replicas share the node's cores: concurrent requests are the parallelism (Recaller pins FAISS likewise).
        torch.set_num_threads(1)
        self.settings = ServeSettings.parse(settings, "RecallDeployment").replica_args()
        self._batch.set_max_batch_size(self.settings["max_batch_size"])
        self._batch.set_batch_wait_timeout_s(self.settings["batch_wait_timeout_s"])
        self.recaller: Recaller | None = None  # set by reconfigure, which Serve calls right after __init__
        self.reload_error: str | None = None  # why the last run switch failed, while the previous run serves
        self._swap = asyncio.Lock()
        self.replica = serve.get_replica_context().replica_id.unique_id

    async def reconfigure(self, user_config: dict) -> None:
        """user_config {"run_dir": ...}: load that run completely, then swap it in (a no-op if it is already loaded).

        A run that fails to load is never swapped in. At start-up that fails the replica (Serve reports it);
        on a running replica the current run stays in service and healthz shows the error as "reload_error",
        so that a bad path or a half-written run cannot take a serving endpoint down.
        """
        async with self._swap:
            try:
                run_dir = _run_dir_of(user_config)
                if self.recaller is not None and self.recaller.run.uri == run_dir:
                    return
                # Off the event loop: requests keep being answered by the current run meanwhile.
                loaded = await asyncio.to_thread(Recaller, run_dir, unknown_items=self.settings["unknown_items"],
                                                 max_history=self.settings["max_history"])
            except Exception as e:
                if self.recaller is None:
                    raise
                self.reload_error = f"user_config {user_config!r}: {type(e).__name__}: {e}"
                logging.getLogger("ray.serve").error("recall: still serving %s; %s", self.recaller.run.uri,
                                                     self.reload_error)
                return
            self.recaller, self.reload_error = loaded, None

    @fastapi_app.post("/recall", response_model=RecallResponse)
    async def recall(self, req: RecallRequest) -> dict:
        """RecallRequest -> {"user_id", "items": [{"item_id", "score", "title"}, ...] best first, "unknown_items", "batch_size"}."""
        query = Query(user_id=req.user_id, history=req.history, k=req.k, exclude_seen=req.exclude_seen,
                      exclude=req.exclude)
        result, batch_size = await self._batch(query)
        if isinstance(result, UnknownUserError):
            raise HTTPException(status_code=404, detail=str(result))
        if isinstance(result, InvalidQueryError):
            # The same shape as FastAPI's own 422s, so clients parse one format.
            raise RequestValidationError([{"type": "value_error", "loc": ("body", result.field), "msg": str(result),
                                           "input": getattr(req, result.field, None)}])
        return {"user_id": req.user_id, **result, "batch_size": batch_size}

    # Sizes here are placeholders: __init__ applies the build args.
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _batch(self, queries: list[Query]) -> list[tuple]:
        """Queries -> [(result or error, batch size)]: one model pass and one index search, off the event loop."""
        recaller = self.recaller  # one run for the whole batch, even if a reload swaps it meanwhile
        results = await asyncio.to_thread(recaller.recall_batch, queries)
        return [(r, len(queries)) for r in results]

    @fastapi_app.get("/healthz")
    def healthz(self) -> dict:
        """-> {"status": "ok", "run": <run dir>, "model", "index": <factory>, "metric", "items", "users", "interests",
        "history_queries", "max_history", "unknown_items", "max_batch_size", "batch_wait_timeout_s", "replica",
        "reload_error": null or why the last switch to another run failed}."""
        return {"status": "ok", **self.recaller.info, **self.settings, "replica": self.replica,
                "reload_error": self.reload_error}


def _resolve(run_dir: str) -> str:
    # Replicas may start in another working directory than the caller: pin a relative path now.
    return run_dir if "://" in run_dir else os.path.abspath(os.path.expanduser(run_dir))


def build_app(run_dir: str, replicas: int = 1, **settings):
    """Run directory (local path or URI), replica count and the other `ServeSettings` -> the bound Serve application.

    The run goes into the deployment's user_config, so that a new run_dir there is a hot reload.
    """
    return _bind(ServeSettings.parse({"run_dir": run_dir, "replicas": replicas, **settings}, "build_app"))


def app_builder(args: dict):
    """Serve application builder: {"run_dir": ..., "replicas": 1, ...} (see `ServeSettings`) from
    `serve run ray_recall.serve.app:app_builder run_dir=...` or a Serve config's `args`."""
    settings = ServeSettings.parse(dict(args), "ray_recall.serve.app:app_builder")
    if settings.run_dir is None:
        raise ValueError("ray_recall.serve.app:app_builder needs run_dir=<run directory>")
    return _bind(settings)


def _bind(settings: ServeSettings):
    if settings.run_dir is None:
        raise ValueError("build_app needs a run directory")
    # Room for one batch being computed while the next one fills.
    options = dict(num_replicas=settings.replicas, user_config={"run_dir": _resolve(settings.run_dir)},
                   max_ongoing_requests=max(2 * settings.max_batch_size, 5))
    return RecallDeployment.options(**options).bind(**settings.replica_args())


def serve_forever(run_dir: str, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1) -> None:
    """Deploy the endpoint for `run_dir` on http://host:port/ and block until Ctrl-C or SIGTERM, then shut Serve down."""
    from ray_recall.rundir import RunDir

    init_ray()
    serve.start(http_options={"host": host, "port": port})
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve.run(build_app(run_dir, replicas), name=APP_NAME, route_prefix="/")
        example = RunDir(_resolve(run_dir)).read_user_vocab().first(1)[0]
        url = f"http://{host}:{port}"
        print(f"Recall endpoint for {run_dir} at {url} ({replicas} replica{'s' if replicas != 1 else ''})\n"
              f"  curl -s {url}/healthz\n"
              f"  curl -s -X POST {url}/recall -H 'content-type: application/json' "
              f"-d '{{\"user_id\": {json.dumps(example)}, \"k\": 10}}'\n"
              "Ctrl-C to stop.", flush=True)
        # Wake up periodically: a signal handler only runs between bytecodes of the main thread.
        while not stop.wait(0.5):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        print("Shutting down Serve.", flush=True)
        serve.shutdown()
