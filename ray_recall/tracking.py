"""Experiment tracking with MLflow: one MLflow run per pipeline (or stage) run.

What a run records: the whole config as params (dotted keys, `train.lr`), the run directory's URI as
the tag `ray_recall.run_dir`, per-epoch loss and validation metrics as they happen (logged by the
rank-0 training worker; by the driver after the fit where a worker cannot reach the store), the test
metrics of the model and of most-popular, and config.yaml, metrics.json and training_curves.png as
artifacts.

Where it goes (`tracking.uri`, else `MLFLOW_TRACKING_URI`, else an embedded store): a local run
directory's parent holds `mlflow.db` (SQLite) and `mlartifacts/`, so
`mlflow ui --backend-store-uri sqlite:///<parent>/mlflow.db` shows every run kept beside it. Metric
names are MLflow's spelling of ours (`recall@10` -> `recall_at_10`: MLflow names have no `@`).

`tracking.enabled: false` turns it off; so does RAY_RECALL_TRACKING=0 in the environment, which wins
over the config (the test suite sets it; one test turns tracking on). MLflow is imported only when a
run is tracked.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from contextlib import contextmanager
from urllib.parse import urlparse

ENV_SWITCH = "RAY_RECALL_TRACKING"
RUN_DIR_TAG = "ray_recall.run_dir"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the run shows under its parent (a search's trials)
_BATCH = 100  # MLflow takes at most 100 params (1000 metrics) per log_batch call
_PARAM_CHARS = 6000  # MLflow's limit on a param value
_REMOTE = ("http", "https", "databricks")


def metric_name(key: str) -> str:
    """Our metric key as a valid MLflow name: `val_recall@10` -> `val_recall_at_10`."""
    return re.sub(r"[^\w./\- :]", "_", key.replace("@", "_at_"))


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """A nested config dict -> {dotted key: value as text} (lists as JSON), MLflow's params."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = (v if isinstance(v, str) else json.dumps(v))[:_PARAM_CHARS]
    return out


def enabled(config_enabled: bool) -> bool:
    switch = os.environ.get(ENV_SWITCH, "").strip().lower()
    if switch in ("0", "false", "off", "no"):
        return False
    return config_enabled


def resolve_uri(uri: str | None, run_root: str | None) -> str:
    """The tracking URI: the configured one, MLFLOW_TRACKING_URI, or SQLite beside a local run directory
    (`run_root`: its local path, or None for a run directory on remote storage: then the working directory)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    parent = os.path.dirname(os.path.abspath(run_root)) if run_root else os.getcwd()
    return "sqlite:///" + os.path.join(parent, "mlflow.db")


def is_remote(uri: str) -> bool:
    """Whether the store is a tracking server (reachable from every node) rather than a local file."""
    return urlparse(uri).scheme in _REMOTE


def _client(uri: str):
    from mlflow import MlflowClient  # importing mlflow sets its loggers' levels: quieten them after

    for name in ("mlflow", "alembic"):  # "Creating initial MLflow database tables...", migration steps
        logging.getLogger(name).setLevel(logging.WARNING)

    return MlflowClient(tracking_uri=uri)


class Tracker:
    """One MLflow run, logged to through `MlflowClient` (no global active run: safe in notebooks and threads)."""

    def __init__(self, uri: str, run_id: str, experiment_id: str):
        self.uri, self.run_id, self.experiment_id = uri, run_id, experiment_id
        self.client = _client(uri)

    @classmethod
    def start(cls, uri: str, experiment: str, name: str, *, artifact_root: str | None = None,
              tags: dict | None = None, parent_run_id: str | None = None) -> "Tracker":
        client = _client(uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            exp_id = client.create_experiment(experiment, artifact_location=artifact_root)
        else:
            exp_id = exp.experiment_id
        tags = dict(tags or {})
        if parent_run_id:
            tags[PARENT_TAG] = parent_run_id
        run = client.create_run(exp_id, run_name=name, tags=tags)
        return cls(uri, run.info.run_id, exp_id)

    def link(self) -> dict:
        """What a training worker needs to log to this run (a plain dict: it travels in the loop config)."""
        return {"uri": self.uri, "run_id": self.run_id}

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + _BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        log_metrics(self.client, self.run_id, metrics, step)

    def has_metric(self, key: str) -> bool:
        return bool(self.client.get_metric_history(self.run_id, metric_name(key)))

    def log_text(self, text: str, file: str) -> None:
        self.client.log_text(self.run_id, text, file)

    def log_bytes(self, data: bytes, file: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, file)
            with open(path, "wb") as f:
                f.write(data)
            self.client.log_artifact(self.run_id, path)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, v)

    def finish(self, ok: bool) -> None:
        """FINISHED, or FAILED if the run is still RUNNING; but a search's trial (a child run) that fails leaves
        its state to the search.

        Tune stops a trial by raising into it and ends its process seconds later, which can fall between any two
        of this process's writes (a clean-clone run of the search test caught a trial's run FAILED after the
        search had closed it KILLED). So a trial never writes FAILED: once Tune has returned, the search gives
        each child the state its trial ended in (`tuning._close_children`), the only writer of a failed trial's end.
        """
        if ok:
            self.client.set_terminated(self.run_id, status="FINISHED")
            return
        run = self.client.get_run(self.run_id)
        if run.info.status == "RUNNING" and PARENT_TAG not in run.data.tags:
            self.client.set_terminated(self.run_id, status="FAILED")


def log_metrics(client, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    """Numeric entries of `metrics` under MLflow's names, in one call."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(metric_name(k), float(v), now, step or 0) for k, v in metrics.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if items:
        client.log_batch(run_id, metrics=items)


class EpochLogger:
    """The rank-0 worker's side: each epoch's metrics to the driver's run, as they happen. Built from
    `Tracker.link()`; a failure to log is reported once and never stops training."""

    def __init__(self, link: dict | None):
        self.link, self.client, self.failed = link, None, False

    def __call__(self, metrics: dict, step: int) -> None:
        if not self.link or self.failed:
            return
        try:
            self.client = self.client or _client(self.link["uri"])
            log_metrics(self.client, self.link["run_id"], metrics, step)
        except Exception as e:  # the store is the driver's business: training goes on
            self.failed = True
            print(f"[train] tracking: could not log to {self.link['uri']} ({type(e).__name__}: {e}); "
                  "the driver logs the epochs after the fit", flush=True)


@contextmanager
def tracked(config: dict, run_uri: str, run_root: str | None, name: str, log=print, *,
            parent_run_id: str | None = None):
    """An MLflow run around a pipeline (or stage) run, or None when tracking is off.

    `config`: the PipelineConfig as a dict (its "tracking" section says where); `run_root`: the local path
    of the run directory, or None when it is on remote storage. The run is marked FAILED if the body raises.
    """
    tc = config.get("tracking") or {}
    if not enabled(tc.get("enabled", True)):
        yield None
        return
    uri = resolve_uri(tc.get("uri"), run_root)
    local_store = not is_remote(uri) and not tc.get("uri") and not os.environ.get("MLFLOW_TRACKING_URI")
    artifact_root = None
    if local_store:
        parent = os.path.dirname(os.path.abspath(run_root)) if run_root else os.getcwd()
        os.makedirs(parent, exist_ok=True)
        artifact_root = "file://" + os.path.join(parent, "mlartifacts")
        if run_root is None:
            log(f"[tracking] the run directory is not local and tracking.uri is not set: logging to {uri} "
                "in the working directory (set tracking.uri to a tracking server on a cluster)")
    tracker = Tracker.start(uri, tc.get("experiment") or "ray_recall", name, artifact_root=artifact_root,
                            tags={RUN_DIR_TAG: run_uri}, parent_run_id=parent_run_id)
    tracker.log_params(flatten({k: v for k, v in config.items() if k != "tracking"}))
    log(f"[tracking] MLflow run {tracker.run_id} in experiment {tc.get('experiment') or 'ray_recall'!r} at {uri}")
    ok = False
    try:
        yield tracker
        ok = True
    finally:
        tracker.finish(ok)
