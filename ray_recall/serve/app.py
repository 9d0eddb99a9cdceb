"""The Ray Serve recall endpoint: a thin HTTP adapter around `Recaller`.

    POST /recall   {"user_id": 1, "k": 10, "exclude_seen": true}
                   -> 200 {"user_id": 1, "items": [{"item_id": 50, "score": 0.93, "title": "..."}, ...]}
                   -> 404 {"detail": "unknown user_id 123: not in this run's users"}
                   -> 422 {"detail": [{"type": ..., "loc": [...], "msg": ..., "input": ...}, ...]}  (bad body)
    GET  /healthz  -> 200 {"status": "ok", "run": ..., "index": ..., "metric": ..., "items": ..., "users": ...}

Start it with `ray-recall serve --run-dir runs/x`, `python jobs/serve.py --run-dir runs/x`,
`serve run ray_recall.serve.app:app_builder run_dir=runs/x`, or a Serve config file whose
`import_path` is `ray_recall.serve.app:app_builder` with `args: {run_dir: ..., replicas: ...}`.
"""

import json
import os
import signal
import threading
from typing import Union

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from ray import serve

from ray_recall.serve.recaller import Recaller, UnknownUserError

APP_NAME = "ray_recall"

# Original ids are ints or strings. Strict types so that JSON true, 1.5 or null is a 422
# rather than silently becoming user 1 or "None".
UserId = Union[StrictInt, StrictStr]


class RecallRequest(BaseModel):
    """Body of POST /recall. Unknown keys are rejected, so a misspelt "topk" is a 422, not a silent default."""

    model_config = ConfigDict(extra="forbid")

    user_id: UserId = Field(description="original user id, as in the interaction log")
    k: StrictInt = Field(10, ge=1, le=1000, description="number of items to return")
    exclude_seen: StrictBool = Field(True, description="drop items already in the user's history")


class RecalledItem(BaseModel):
    item_id: UserId = Field(description="original item id")
    score: float
    title: str


class RecallResponse(BaseModel):
    user_id: UserId
    items: list[RecalledItem]


fastapi_app = FastAPI(title="ray_recall", description="Top-K recall for the users of a trained run.")


@serve.deployment
@serve.ingress(fastapi_app)
class RecallDeployment:
    """One replica: loads the run once in `__init__`, then answers requests from memory."""

    def __init__(self, run_dir: str):
        # Recaller also pins FAISS to one OpenMP thread: concurrent requests are the parallelism.
        self.recaller = Recaller(run_dir)

    @fastapi_app.post("/recall", response_model=RecallResponse)
    def recall(self, req: RecallRequest) -> dict:
        """RecallRequest -> {"user_id": as sent, "items": [{"item_id", "score", "title"}, ...]}, best first."""
        try:
            items = self.recaller.recall(req.user_id, req.k, exclude_seen=req.exclude_seen)
        except UnknownUserError as e:
            raise HTTPException(status_code=404, detail=str(e)) from None
        return {"user_id": req.user_id, "items": items}

    @fastapi_app.get("/healthz")
    def healthz(self) -> dict:
        """-> {"status": "ok", "run": <run dir>, "index": <factory>, "metric", "items", "users"}."""
        return {"status": "ok", **self.recaller.info}


def _resolve(run_dir: str) -> str:
    # Replicas may start in another working directory than the caller: pin a relative path now.
    return run_dir if "://" in run_dir else os.path.abspath(os.path.expanduser(run_dir))


def build_app(run_dir: str, replicas: int = 1):
    """Run directory (local path or URI), replica count -> the bound Serve application."""
    return RecallDeployment.options(num_replicas=replicas, ray_actor_options={"num_cpus": 0.5}).bind(_resolve(run_dir))


def app_builder(args: dict):
    """Serve application builder: {"run_dir": ..., "replicas": 1} (from `serve run ... run_dir=...` or a config)."""
    if "run_dir" not in args:
        raise ValueError("ray_recall.serve.app:app_builder needs run_dir=<run directory>")
    return build_app(args["run_dir"], int(args.get("replicas", 1)))


def serve_forever(run_dir: str, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1) -> None:
    """Deploy the endpoint for `run_dir` on http://host:port/ and block until Ctrl-C or SIGTERM, then shut Serve down."""
    from ray_recall.data.preprocess import load_user_ids
    from ray_recall.pipeline import init_ray
    from ray_recall.storage import RunDir

    init_ray()
    serve.start(http_options={"host": host, "port": port})
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve.run(build_app(run_dir, replicas), name=APP_NAME, route_prefix="/")
        users = load_user_ids(RunDir(_resolve(run_dir)))
        example = users[0].item() if hasattr(users[0], "item") else users[0]
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
