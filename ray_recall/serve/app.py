"""The Ray Serve recall endpoint: a thin HTTP adapter around `Recaller`.

    POST /recall   {"user_id": 1, "k": 10, "exclude_seen": true, "exclude": [50]}
                   {"history": [50, 172, 133], "k": 10}      (original item ids, oldest first)
                   -> 200 {"user_id": 1 | null, "items": [{"item_id": 50, "score": 0.93, "title": "..."}, ...],
                           "unknown_items": [...], "batch_size": 3}
                   -> 404 {"detail": "unknown user_id 123: not in this run's users"}
                   -> 422 {"detail": [{"type": ..., "loc": [...], "msg": ..., "input": <short prefix>}, ...]}
                          (bad body or query); 413 past max_body_bytes; 415 unless the body is application/json
    GET  /healthz  -> 200 {"status": "ok", "run": ..., "model": ..., "index": ..., "items": ..., "users": ..., ...}

Concurrent requests are answered in batches (`@serve.batch`): one user-tower pass over the batch's
histories and one FAISS search for all of its vectors; `batch_size` says how many requests shared it.
The run is the deployment's `user_config` ({"run_dir": ...}): changing it (`serve deploy` of a config
whose `user_config.run_dir` changed) makes every replica load the new run completely, then swap it in;
requests in flight finish on the old one, none fails. A run that fails to load is never swapped in
(healthz then shows `reload_error`).

Every request is bounded before any work: the body is read up to `max_body_bytes`, parsed once by
pydantic-core (NaN, Infinity, bad UTF-8 and deep nesting are 422s), and each id checked (int64 or
at most `max_id_length` characters) and looked up on its own, never by converting the vocabulary.

Start it with `ray-recall serve --run-dir runs/x`, `python jobs/serve.py --run-dir runs/x`,
`serve run ray_recall.serve.app:app_builder run_dir=runs/x`, or a Serve config file whose
`import_path` is `ray_recall.serve.app:app_builder` with `args: {run_dir: ..., replicas: ...}` (see `ServeSettings`).
"""

import asyncio
import hmac
import json
import logging
import math
import os
import signal
import threading
from typing import Annotated, Any, Literal, Optional, Union

import ray
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import (BaseModel, ConfigDict, Field, PlainValidator, StrictBool, StrictInt, ValidationError,
                      ValidationInfo, WithJsonSchema, field_validator, model_validator)
from pydantic_core import PydanticCustomError
from ray import serve

from ray_recall.runtime import bound_heap_growth, init_ray, started_here, verbose
from ray_recall.serve.recaller import InvalidQueryError, Query, Recaller, UnknownUserError

APP_NAME = "ray_recall"
INT64 = (-(2**63), 2**63 - 1)
ECHO_CHARS = 80  # an error reply shows at most this much of the offending input


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
    max_exclude: int = Field(10_000, ge=0)
    """the longest `exclude` list accepted, in items"""
    max_k: int = Field(1000, ge=1)
    """the largest `k`"""
    max_id_length: int = Field(256, ge=1)
    """the longest string id accepted, in characters (integer ids must fit in int64)"""
    max_body_bytes: int = Field(1 << 20, ge=64)
    """the largest request body, in bytes (a 413 past it); the default holds max_exclude ids of ~100 characters"""
    access_log: bool = False
    """one log line per request from the replicas (Serve's access log)"""
    auth: Literal["off", "token"] = "off"
    """token: POST /recall needs `Authorization: Bearer <token>` (a 401 otherwise); GET /healthz stays open"""
    auth_token_env: str = "RAY_RECALL_TOKEN"
    """the environment variable holding the token, on every node that hosts a replica (on Kubernetes: an env
    entry from a Secret)"""
    auth_token_file: Optional[str] = None
    """or a file holding it (a mounted Kubernetes Secret); read when each replica starts"""

    def read_token(self) -> bytes | None:
        """The bearer token of auth=token (None for auth=off); a ValueError naming what to set when there is none."""
        if self.auth == "off":
            return None
        if self.auth_token_file:
            try:
                with open(self.auth_token_file, "rb") as f:
                    token = f.read().strip()
            except OSError as e:
                raise ValueError(f"auth=token: cannot read auth_token_file {self.auth_token_file!r}: {e}") from None
        else:
            token = os.environ.get(self.auth_token_env, "").strip().encode()
        if len(token) < 16:
            where = f"auth_token_file {self.auth_token_file!r}" if self.auth_token_file else \
                f"the environment variable {self.auth_token_env} on this node"
            raise ValueError(f"auth=token needs a token of at least 16 characters in {where}")
        return token

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
        return self.model_dump(exclude={"run_dir", "replicas", "access_log"})

    def limits(self) -> dict:
        """The request limits, as the validation context of `RecallRequest`."""
        return {k: getattr(self, k) for k in ("max_history", "max_exclude", "max_k", "max_id_length", "max_body_bytes")}


BUILD_ARGS = {name: field.default for name, field in ServeSettings.model_fields.items()}

DEFAULT_LIMITS = ServeSettings().limits()


def _limit(info: ValidationInfo, key: str) -> int:
    return (info.context or DEFAULT_LIMITS)[key]


def _check_id(value: Any, info: ValidationInfo):
    """An original id: an int in int64's range or a string of at most max_id_length characters; nothing else
    (JSON true, 1.5, null, NaN, a list) becomes an id."""
    if isinstance(value, str):
        if len(value) > _limit(info, "max_id_length"):
            raise PydanticCustomError("id_too_long", "a string id is at most {limit} characters; this one has {n}",
                                      {"limit": _limit(info, "max_id_length"), "n": len(value)})
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if not INT64[0] <= value <= INT64[1]:
            raise PydanticCustomError("id_out_of_range", "an integer id must lie in [-2**63, 2**63 - 1]")
        return value
    raise PydanticCustomError("id_type", "an id is an integer or a string, not {kind}",
                              {"kind": "null" if value is None else type(value).__name__})


# Original ids are ints or strings, checked strictly, so that JSON true, 1.5 or null is a 422 rather than
# silently becoming user 1 or "None", and bounded, so that no id costs more than its few bytes to look up.
Id = Annotated[Union[int, str], PlainValidator(_check_id), WithJsonSchema({"anyOf": [
    {"type": "integer", "minimum": INT64[0], "maximum": INT64[1]},
    {"type": "string", "maxLength": DEFAULT_LIMITS["max_id_length"]}]})]


class RecallRequest(BaseModel):
    """Body of POST /recall. Unknown keys are rejected, so a misspelt "topk" is a 422, not a silent default.

    Validate with `RecallRequest.model_validate_json(body, context=ServeSettings(...).limits())`: the
    endpoint's limits (list lengths, k, id length) come from its build args.
    """

    model_config = ConfigDict(extra="forbid")

    # Defaults are None but an explicit null is still a 422: Pydantic does not validate defaults.
    user_id: Id = Field(None, description="original user id, as in the interaction log (or give history)")
    history: list[Id] = Field(None, description="original item ids, oldest first, for a user the run need "
                                                "not know (or give user_id)",
                              json_schema_extra={"maxItems": DEFAULT_LIMITS["max_history"]})
    k: StrictInt = Field(10, ge=1, description="number of items to return",
                         json_schema_extra={"maximum": DEFAULT_LIMITS["max_k"]})
    exclude_seen: StrictBool = Field(True, description="drop the user's known items, or the history's items")
    exclude: list[Id] = Field(default_factory=list, description="original item ids never returned",
                              json_schema_extra={"maxItems": DEFAULT_LIMITS["max_exclude"]})

    @field_validator("history", "exclude", mode="before")
    @classmethod
    def _bounded_list(cls, value, info: ValidationInfo):
        limit = _limit(info, "max_history" if info.field_name == "history" else "max_exclude")
        if isinstance(value, list) and len(value) > limit:  # checked before any element is
            raise PydanticCustomError("too_long", "{field} has {n} items; at most {limit} are accepted",
                                      {"field": info.field_name, "n": len(value), "limit": limit})
        return value

    @field_validator("k")
    @classmethod
    def _bounded_k(cls, value: int, info: ValidationInfo) -> int:
        if value > _limit(info, "max_k"):
            raise PydanticCustomError("too_large", "k must be at most {limit}", {"limit": _limit(info, "max_k")})
        return value

    @model_validator(mode="after")
    def _one_of_user_or_history(self):
        if (self.user_id is None) == (self.history is None):
            raise ValueError("give exactly one of user_id (a user of this run) or history (original item ids, "
                             "oldest first)")
        return self


def _echo(value: Any) -> Any:
    """The part of an offending input an error reply may show: short scalars as they are, anything else as a
    prefix of its text (never the whole body, never a value JSON cannot carry, such as NaN)."""
    if value is None or isinstance(value, bool) or (isinstance(value, int) and abs(value) < 2**63):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value[:ECHO_CHARS]).decode("utf-8", "replace")
        return text + ("..." if len(value) > ECHO_CHARS else "")
    text = value if isinstance(value, str) else repr(value)[:ECHO_CHARS + 1]
    return text[:ECHO_CHARS] + ("..." if len(text) > ECHO_CHARS else "")


def validation_errors(errors: list[dict], prefix: tuple = ("body",)) -> list[dict]:
    """Pydantic errors -> FastAPI's 422 shape {"type", "loc", "msg", "input"}, inputs cut to a short prefix."""
    return [{"type": e["type"], "loc": [*prefix, *e.get("loc", ())], "msg": str(e["msg"])[:500],
             "input": _echo(e.get("input"))} for e in errors]


def request_error(status: int, detail) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail})


def check_token(request: Request, token: bytes) -> None:
    """401 unless the request carries `Authorization: Bearer <token>` (compared in constant time)."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
        raise HTTPException(401, "POST /recall needs the header Authorization: Bearer <token> (auth=token)",
                            headers={"WWW-Authenticate": "Bearer"})


async def parse_request(request: Request, limits: dict) -> RecallRequest:
    """The body of POST /recall -> RecallRequest, in time and memory bounded by `limits`.

    415 unless the content type is JSON; 413 past max_body_bytes (read no further than that); 422 for
    anything else: bad UTF-8, NaN or Infinity, nesting past 200 levels, a huge integer, a wrong type,
    a list or id past its limit (pydantic-core's JSON parser reads the body in one pass).
    """
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, f"content-type must be application/json, got {_echo(ctype)!r}")
    limit = limits["max_body_bytes"]
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body of {declared} bytes; at most {limit} are accepted")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"request body over {limit} bytes; at most {limit} are accepted")
    try:
        return RecallRequest.model_validate_json(bytes(body), context=limits)
    except ValidationError as e:
        raise RequestValidationError(validation_errors(e.errors(include_url=False))) from None


class RecalledItem(BaseModel):
    item_id: Union[int, str] = Field(description="original item id")
    score: float
    title: str


class RecallResponse(BaseModel):
    user_id: Optional[Union[int, str]] = Field(description="as sent; null for a history query")
    items: list[RecalledItem]
    unknown_items: list[Union[int, str]] = Field(description="history items not in the run, ignored (as sent)")
    batch_size: int = Field(description="requests answered together with this one (one model pass, one search)")


fastapi_app = FastAPI(title="ray_recall", description="Top-K recall for the users of a trained run, or for a history.")


def _one_line(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split())
    return text[:limit] + ("..." if len(text) > limit else "")


def _request_id() -> str:
    """Serve's id of the request being answered (the proxy returns it to the client as x-request-id)."""
    try:
        return serve.context._get_serve_request_context().request_id or "-"
    except Exception:  # Ray Serve's private API: never let it cost an answer
        return "-"


class _OneLinePerError:
    """ASGI middleware: an unexpected error is a 500 whose body names the request id, and one ERROR line in the
    replica's log (no traceback). Client errors (4xx) log nothing: the access log, off by default, has them.

    Plain ASGI rather than `@app.middleware("http")`, whose wrapper runs every request's response through a
    task and a memory stream (about 0.5 ms a request on a loaded 2-core node, `benchmarks/scale.md`).
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception as e:
            rid = _request_id()
            logging.getLogger("ray.serve").error("recall: 500 for request %s (%s %s): %s: %s", rid, scope.get("method"),
                                                 scope.get("path"), type(e).__name__, _one_line(e))
            if started:  # part of an answer is out: nothing better to send
                raise
            await JSONResponse({"detail": f"internal error (request id {rid})"}, status_code=500)(scope, receive, send)


fastapi_app.add_middleware(_OneLinePerError)


@fastapi_app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # Errors built here are already cut short; FastAPI's own (a query parameter, say) are cut here.
    return request_error(422, [e if isinstance(e.get("loc"), list) else validation_errors([e], ())[0]
                               for e in exc.errors()])


# The body is read by parse_request (bounded, one parse), so the schema of /recall's body is given here
# and added to the components (`_openapi`).
RECALL_OPENAPI = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/RecallRequest"}}}}}
_fastapi_openapi = fastapi_app.openapi


def _openapi() -> dict:
    if fastapi_app.openapi_schema is None:
        spec = _fastapi_openapi()  # caches itself in fastapi_app.openapi_schema
        spec.setdefault("components", {}).setdefault("schemas", {})["RecallRequest"] = \
            RecallRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    return fastapi_app.openapi_schema


fastapi_app.openapi = _openapi
RECALL_RESPONSES = {401: {"description": "auth=token and no or a wrong bearer token"},
                    413: {"description": "body over max_body_bytes"},
                    415: {"description": "content type other than application/json"},
                    404: {"description": "unknown user_id"},
                    422: {"description": "invalid body: detail[].msg says why"}}


# Defined before the deployment: Serve pickles the class when it is decorated, with the globals it sees then.
def _inter_deployment_grpc_on_loopback() -> None:
    """On a loopback-only node, make this replica's inter-deployment gRPC server listen on the node's address.

    Ray Serve 2.60 starts that server in every replica on "[::]:0", every interface, whatever the node's
    address (ray/serve/_private/replica.py, `_on_initialized`, which runs after the deployment's __init__),
    and has no setting for it. On a node whose IP is a loopback address (a Ray the project started itself:
    `runtime.loopback_only`) every peer is on this machine, so the server is bound to that address instead.
    A cluster node is left as Ray has it. Nothing happens if Ray no longer has the function this replaces.
    """
    import ipaddress

    import ray
    from ray.serve._private import replica as serve_replica

    node_ip = ray.util.get_node_ip_address()
    bind = getattr(serve_replica, "add_port_to_grpc_server", None)
    if bind is None or getattr(bind, "loopback_only", False) or not ipaddress.ip_address(node_ip).is_loopback:
        return
    host = f"[{node_ip}]" if ":" in node_ip else node_ip

    def bind_node_address(server, address: str):
        if address.startswith("[::]:") or address.startswith("0.0.0.0:"):
            address = f"{host}:{address.rsplit(':', 1)[1]}"
        return bind(server, address)

    bind_node_address.loopback_only = True
    serve_replica.add_port_to_grpc_server = bind_node_address


def _replicas_running() -> int:
    """How many replicas of this replica's deployment Serve counts as running (0 if it cannot tell)."""
    try:
        ctx = serve.get_replica_context()
        app = serve.status().applications.get(ctx.app_name)
        deployment = app.deployments.get(ctx.deployment) if app else None
        return int(deployment.replica_states.get("RUNNING", 0)) if deployment else 0
    except Exception:
        return 0


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
        bound_heap_growth()  # long-lived: request batch after request batch
        _inter_deployment_grpc_on_loopback()
        parsed = ServeSettings.parse(settings, "RecallDeployment")
        self.settings, self.limits = parsed.replica_args(), parsed.limits()
        self._token = parsed.read_token()  # never in self.settings, which healthz shows
        self._batch.set_max_batch_size(self.settings["max_batch_size"])
        self._batch.set_batch_wait_timeout_s(self.settings["batch_wait_timeout_s"])
        self.recaller: Recaller | None = None  # set by reconfigure, which Serve calls right after __init__
        self.reload_error: str | None = None  # why the last run switch failed, while the previous run serves
        self.start_error: str | None = None  # why the first run failed to load (a start-up in the background)
        self._starting: asyncio.Task | None = None  # that load
        self._swap = asyncio.Lock()
        self.replica = serve.get_replica_context().replica_id.unique_id

    async def reconfigure(self, user_config: dict) -> None:
        """user_config {"run_dir": ...}: load that run completely, then swap it in (a no-op if it is already loaded).

        A run that fails to load is never swapped in. On a running replica the current run stays in service and
        healthz shows the error as "reload_error", so that a bad path or a half-written run cannot take a serving
        endpoint down. A replica that starts beside running ones (more replicas, a new version, a replacement)
        loads before Serve routes anything to it; a load that fails then fails the replica (Serve reports it).
        The first replicas of a deployment load in the background instead: nothing else could answer, and
        Serve's proxy would hold every request, /healthz included, until the load ends. Meanwhile /healthz
        answers 503 at once, /recall waits for the load, and a failed load makes the replica unhealthy.
        """
        if self.recaller is None and self._starting is None and not await asyncio.to_thread(_replicas_running):
            await self._swap.acquire()  # held until the load ends: a reconfigure meanwhile waits for it
            self._starting = asyncio.create_task(self._start(user_config))
            return
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

    async def _start(self, user_config: dict) -> None:
        try:
            self.recaller = await asyncio.to_thread(Recaller, _run_dir_of(user_config),
                                                    unknown_items=self.settings["unknown_items"],
                                                    max_history=self.settings["max_history"])
        except Exception as e:
            self.start_error = f"user_config {user_config!r}: {type(e).__name__}: {_one_line(e)}"
            logging.getLogger("ray.serve").error("recall: cannot serve; %s", self.start_error)
        finally:
            self._swap.release()

    def check_health(self) -> None:
        """Serve's periodic check: a replica whose first run failed to load is replaced."""
        if self.start_error:
            raise RuntimeError(f"the run failed to load: {self.start_error}")

    async def _started(self) -> None:
        """Wait for a first load in the background; a 503 if there is none to wait for or it failed."""
        if self.recaller is None and self._starting is not None:
            await asyncio.shield(self._starting)
        if self.recaller is None:
            raise HTTPException(status_code=503, detail=f"not serving: {self.start_error or 'no run loaded yet'}",
                                headers={"retry-after": "1"})

    @fastapi_app.post("/recall", response_model=RecallResponse, openapi_extra=RECALL_OPENAPI,
                      responses=RECALL_RESPONSES)
    async def recall(self, request: Request) -> dict:
        """RecallRequest -> {"user_id", "items": [{"item_id", "score", "title"}, ...] best first, "unknown_items", "batch_size"}."""
        if self._token is not None:
            check_token(request, self._token)
        await self._started()
        req = await parse_request(request, self.limits)
        query = Query(user_id=req.user_id, history=req.history, k=req.k, exclude_seen=req.exclude_seen,
                      exclude=req.exclude)
        result, batch_size = await self._batch(query)
        if isinstance(result, UnknownUserError):
            raise HTTPException(status_code=404, detail=str(result))
        if isinstance(result, InvalidQueryError):
            # The same shape as FastAPI's own 422s, so clients parse one format.
            raise RequestValidationError(validation_errors([{"type": "value_error", "loc": (result.field,),
                                                             "msg": str(result), "input": getattr(req, result.field)}]))
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
        "reload_error": null or why the last switch to another run failed}; while the first run loads,
        503 {"status": "starting"} (or "failed", with "error") at once."""
        if self.recaller is None:
            return JSONResponse({"status": "failed" if self.start_error else "starting", "error": self.start_error,
                                 "replica": self.replica}, status_code=503, headers={"retry-after": "1"})
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
                   max_ongoing_requests=max(2 * settings.max_batch_size, 5),
                   logging_config={"enable_access_log": settings.access_log})
    return RecallDeployment.options(**options).bind(**settings.replica_args())


def _wait_loaded(url: str, stop: threading.Event) -> None:
    """Until the replicas have loaded the run (healthz 200); a RuntimeError naming why if it failed to load."""
    import urllib.error
    import urllib.request

    while not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except urllib.error.HTTPError as e:
            body = json.loads(e.read() or b"{}")
            if body.get("status") == "failed":
                raise RuntimeError(f"the endpoint cannot serve the run: {body.get('error')}") from None
        except (urllib.error.URLError, OSError, ValueError):
            pass
        stop.wait(0.5)


def serve_forever(run_dir: str, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1) -> None:
    """Deploy the endpoint for `run_dir` on http://host:port/ and block until Ctrl-C or SIGTERM, then shut Serve down."""
    from ray_recall.rundir import RunDir

    init_ray()
    if not verbose():  # Serve's own lines on starting (and a misleading "connecting to existing Serve app"): ours say it
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(http_options={"host": host, "port": port})
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve.run(build_app(run_dir, replicas), name=APP_NAME, route_prefix="/")
        _wait_loaded(f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}/healthz", stop)
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
        if started_here():
            # Stopping the Ray this command started stops Serve with it. serve.shutdown() would kill its controller
            # under a pending call, which Ray 2.60 reports on the console as a failed task "to be retried".
            ray.shutdown()
        else:
            serve.shutdown()
