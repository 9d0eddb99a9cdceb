"""Hyperparameter search on Ray Tune: any config keys, ASHA on the validation metric, one Ray Train fit per trial.

    ray-recall tune --config configs/ml100k_sasrec.yaml --space configs/space_sasrec.yaml --num-samples 12

A search space is a YAML mapping of dotted config keys to distributions (nested mappings are read as
dotted keys too):

    train.lr: loguniform(1e-4, 1e-2)
    train.temperature: choice([0.05, 0.1, 0.2])
    model.params.num_blocks: choice([1, 2])
    train.num_negatives: [64, 256]          # a plain list is a choice
    train.batch_size: 64                    # a plain value is fixed

Distributions: uniform(a, b), loguniform(a, b), quniform(a, b, q), qloguniform(a, b, q), randint(a, b)
(b excluded), choice([...]), grid([...]) (every value, times --num-samples). Every key and value is
checked against the config before anything runs.

How a search runs:

- The data stage runs once, in the base config's run directory (so that `ray-recall pipeline --config
  best.yaml` finds it done), and every trial adopts it (hard links on local disk); a space that
  searches `data.*` keys has each trial prepare its own.
- Each trial is a Ray Tune trial that runs the train stage (`pipeline.run_stage`) in its own run
  directory, <search>/trials/<trial id>: a Ray Train fit with the config's workers and CPUs, whose
  per-epoch validation metrics reach Tune through Ray Train's `TuneReportCallback`. ASHA stops the
  trials that fall behind at each rung (epochs grace, grace x 3, ...); early stopping ends the rest.
- Trials run `max_concurrent` at a time: by default as many as the cluster's CPUs hold now; name
  more on an autoscaling cluster and the autoscaler adds nodes for their workers.
- <search>/best.yaml is the best trial's config (best validation metric of any epoch), with the base
  config's run directory: `ray-recall pipeline --config <search>/best.yaml` trains it again and
  reproduces its validation metric (a fit is reproducible for a seed). <search>/trials.csv lists
  every trial.
- Tracked in MLflow (ray_recall/tracking.py): the search is a run, each trial a child run with its
  config and per-epoch metrics.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import time
from typing import Any

import ray
import yaml
from ray import tune

from ray_recall.config import PipelineConfig
from ray_recall.errors import ConfigError
from ray_recall.pipeline import check_config, run_stage
from ray_recall.rundir import RunDir
from ray_recall.storage import Storage
from ray_recall.tracking import ENV_SWITCH, RUN_DIR_TAG, tracked

_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.S)
# name -> (number of arguments, what they must be)
_DISTRIBUTIONS = {"uniform": 2, "loguniform": 2, "quniform": 3, "qloguniform": 3, "randint": 2, "choice": 1, "grid": 1}
_NOT_SEARCHABLE = ("run_dir", "tracking")
_TRIAL_CPU = 0.01  # what a trial's own actor reserves: it starts a Ray Train fit and waits


def _number(v):
    """YAML reads 1e-3 (no dot) as text: take it as the number it means."""
    if isinstance(v, str):
        for kind in (int, float):
            try:
                return kind(v)
            except ValueError:
                pass
    return v


def _domain(name: str, args: list):
    if name in ("choice", "grid"):
        values = args[0]
        if not isinstance(values, list) or not values:
            raise ValueError(f"{name}() takes one non-empty list, e.g. {name}([0.05, 0.1])")
        return tune.choice(values) if name == "choice" else tune.grid_search(values)
    args = [_number(a) for a in args]
    if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ValueError(f"{name}() takes numbers, got {args}")
    if name != "randint" and args[0] >= args[1]:
        raise ValueError(f"{name}({args[0]}, {args[1]}): the lower bound must be below the upper")
    if name in ("loguniform", "qloguniform") and args[0] <= 0:
        raise ValueError(f"{name}() needs positive bounds, got {args[0]}")
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "quniform": tune.quniform,
            "qloguniform": tune.qloguniform, "randint": tune.randint}[name](*args)


def _dotted(raw: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in raw.items():
        if not isinstance(key, str):
            raise ConfigError(f"search space: key {key!r} is not a string")
        if isinstance(value, dict):
            out.update(_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def parse_space(raw: dict) -> dict[str, Any]:
    """A search-space mapping (see the module docstring) -> {dotted key: Tune domain or fixed value}."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("search space: expected a non-empty mapping of config keys to distributions, "
                          "e.g. {'train.lr': 'loguniform(1e-4, 1e-2)'}")
    space = {}
    for key, spec in _dotted(raw).items():
        if key.split(".")[0] in _NOT_SEARCHABLE:
            raise ConfigError(f"search space: {key!r} cannot be searched (each trial has its own run directory "
                              "and tracking)")
        if isinstance(spec, list):
            space[key] = tune.choice(spec) if spec else None
        elif isinstance(spec, str) and (m := _CALL.match(spec)):
            name, args = m.group(1), m.group(2)
            if name not in _DISTRIBUTIONS:
                raise ConfigError(f"search space {key}: unknown distribution {name!r} in {spec!r}; choose one of "
                                  f"{sorted(_DISTRIBUTIONS)}")
            try:
                values = yaml.safe_load(f"[{args}]")
            except yaml.YAMLError:
                raise ConfigError(f"search space {key}: cannot read the arguments of {spec!r}") from None
            if len(values) != _DISTRIBUTIONS[name]:
                raise ConfigError(f"search space {key}: {name}() takes {_DISTRIBUTIONS[name]} argument(s), "
                                  f"got {len(values)} in {spec!r}")
            try:
                space[key] = _domain(name, values)
            except ValueError as e:
                raise ConfigError(f"search space {key}: {e}") from None
        else:
            space[key] = spec
        if space[key] is None:
            raise ConfigError(f"search space {key}: an empty list has nothing to choose from")
    return space


def _candidates(domain) -> list:
    """Values of a domain to check the config with: every category, or both bounds of a range."""
    from ray.tune.search.sample import Categorical, Domain

    if isinstance(domain, dict) and "grid_search" in domain:
        return list(domain["grid_search"])
    if isinstance(domain, Categorical):
        return list(domain.categories)
    if isinstance(domain, Domain):
        lower, upper = domain.lower, domain.upper
        if isinstance(lower, int) and isinstance(upper, int):
            return [lower, upper - 1]  # randint's upper bound is excluded
        return [lower, upper]
    return [domain]


def check_space(cfg: PipelineConfig, space: dict[str, Any]) -> None:
    """Every key of `space` is a config key and every value it can take is valid there (ConfigError naming both)."""
    for key, domain in space.items():
        for value in _candidates(domain):
            try:
                check_config(cfg.replace(**{key: value}))
            except ConfigError as e:
                raise ConfigError(f"search space {key}={value!r}: {e}") from None


def default_concurrency(cfg: PipelineConfig) -> int:
    """How many trials the cluster's CPUs hold now, one CPU left for Ray Data's read tasks."""
    cpus = ray.cluster_resources().get("CPU", 1)
    per_trial = cfg.train.num_workers * cfg.train.cpus_per_worker
    return max(1, int(math.floor((cpus - 1) / per_trial + 1e-9)))


def run_trial(params: dict, *, base: dict, search_uri: str, data_from: str | None, parent_run_id: str | None,
              tracking_uri: str | None) -> None:
    """One trial (a Ray Tune function trainable): the train stage of `base` with `params` in its own run directory.

    `data_from`: the run directory whose data stage the trial adopts (None: the trial prepares its own).
    The fit's per-epoch metrics reach Tune through Ray Train's TuneReportCallback.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    run_uri = Storage(search_uri).uri_of("trials", trial_id)
    overrides = {**params, "run_dir": run_uri}
    if tracking_uri:  # the search's store, not one beside the trial's own directory
        overrides["tracking.uri"] = tracking_uri
        os.environ[ENV_SWITCH] = "1"  # the driver decided: this process may have inherited a "0"
    else:
        overrides["tracking.enabled"] = False
    cfg = PipelineConfig.from_dict(base).replace(**overrides)
    run = RunDir(run_uri)
    run.write_config(cfg)
    quiet = lambda *_: None  # noqa: E731  (the search prints one line per trial)
    if data_from:
        run.adopt_stage(RunDir(data_from), "preprocess")
    else:
        run_stage(cfg, "preprocess", log=quiet)
    run_stage(cfg, "train", force=True, log=quiet, tracking_name=f"trial {trial_id}", tracking_parent=parent_run_id,
              train_options={"callbacks": [TuneReportCallback()], "quiet_workers": True})


class _Progress(tune.Callback):
    """One console line as each trial starts and ends (Tune's own status tables are off); keeps each trial's
    validation metric per epoch for those lines."""

    def __init__(self, log, metric: str, total: int, keys: list[str]):
        self.log, self.metric, self.total, self.keys = log, metric, total, keys
        self.values: dict[str, list[float]] = {}
        self.ended = 0
        self.running = self.most_running = 0  # trials started and not yet ended; the most at once

    def __getstate__(self):  # Tune pickles its callbacks with the experiment state; the log function stays here
        return {**self.__dict__, "log": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.log = self.log or print

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self.log(f"[tune] trial {trial.trial_id} started: {_describe(trial.config, self.keys)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.metric in result:
            self.values.setdefault(trial.trial_id, []).append(result[self.metric])

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended += 1
        self.running -= 1
        values = self.values.get(trial.trial_id, [])
        best = (f"best {self.metric} {max(values):.4f} at epoch {values.index(max(values)) + 1}" if values
                else "no epoch reported")
        self.log(f"[tune] trial {trial.trial_id} ended after {len(values)} epoch(s), {best} "
                 f"({self.ended}/{self.total} done)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.ended += 1
        self.running -= 1
        self.log(f"[tune] trial {trial.trial_id} failed (its error: {trial.path}/error.txt) "
                 f"({self.ended}/{self.total} done)")


def _describe(params: dict, keys: list[str]) -> str:
    return ", ".join(f"{k}={_short(params[k])}" for k in keys if k in params)


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def search(cfg: PipelineConfig, space: dict, *, num_samples: int = 12, max_concurrent: int | None = None,
           grace_period: int = 4, reduction_factor: int = 3, out: str | None = None, seed: int = 0,
           log=print) -> dict:
    """Search `space` (a mapping as in the module docstring) around `cfg` with ASHA on the validation metric.

    `num_samples` trials (times every grid value); `max_concurrent` at a time (None: as the cluster's CPUs
    hold now); ASHA's first rung after `grace_period` epochs, each next one `reduction_factor` times later;
    `out`: the search directory (default <run_dir>-tune, any URI); `seed`: the random search's seed.
    Returns {"best": {trial_id, params, metric, value, epoch, run_dir}, "best_config": <search>/best.yaml,
    "trials": [...], "seconds": wall time}.
    """
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    cfg = check_config(cfg)
    domains = parse_space(space)
    check_space(cfg, domains)
    keys = list(domains)
    metric = cfg.train.selection_metric
    search_dir = Storage(out or cfg.run_dir.rstrip("/") + "-tune")
    concurrent = max_concurrent or default_concurrency(cfg)
    shares_data = not any(k.startswith("data.") for k in keys)
    grace_period = max(1, min(grace_period, cfg.train.epochs))  # ASHA needs its first rung within the epochs
    t0 = time.perf_counter()
    log(f"[tune] {num_samples} trial(s) of {cfg.model.name} over {', '.join(keys)}; ASHA on {metric} "
        f"(rungs at {grace_period} x {reduction_factor}^k epochs, at most {cfg.train.epochs}); "
        f"{concurrent} at a time; in {search_dir.uri}")
    if shares_data:
        run_stage(cfg, "preprocess", log=log)  # in the base run directory: best.yaml's pipeline finds it done

    with tracked(cfg.to_dict(), search_dir.uri, search_dir.root if search_dir.is_local else None,
                 f"{cfg.model.name} search", log) as parent:
        if parent:
            parent.log_text(yaml.safe_dump(space, sort_keys=False), "space.yaml")
        tracking_uri = parent.uri if parent else None
        trainable = tune.with_parameters(run_trial, base=cfg.to_dict(), search_uri=search_dir.uri,
                                         data_from=cfg.run_dir if shares_data else None,
                                         parent_run_id=parent.run_id if parent else None, tracking_uri=tracking_uri)
        progress = _Progress(log, metric, num_samples, keys)
        tuner = tune.Tuner(
            # The trial itself only waits on its Ray Train fit, whose workers hold the CPUs (Tune refuses an
            # empty request, hence a token share).
            tune.with_resources(trainable, {"CPU": _TRIAL_CPU}),
            param_space=domains,
            tune_config=tune.TuneConfig(
                metric=metric, mode="max", num_samples=num_samples, max_concurrent_trials=concurrent,
                search_alg=BasicVariantGenerator(random_state=seed, max_concurrent=concurrent),
                # max_t past the last epoch: a trial that gets there ends by itself, writing its model.
                scheduler=ASHAScheduler(max_t=cfg.train.epochs + 1, grace_period=grace_period,
                                        reduction_factor=reduction_factor),
                trial_dirname_creator=lambda trial: trial.trial_id),
            run_config=tune.RunConfig(name="search", storage_path=search_dir.uri_of("tune"), verbose=0,
                                      callbacks=[progress]),
        )
        # Tune's newer console output prints its experiment box whatever the verbosity; the older one is silent
        # at verbose=0. Our own lines say what happens.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        grid = tuner.fit()
        trials = _trials(grid, keys, metric, search_dir)
        if not any(t["value"] is not None for t in trials):
            errors = [str(r.error).strip().splitlines()[-1] for r in grid if r.error]
            raise RuntimeError(f"every trial of the search failed ({errors[0] if errors else 'no metric reported'}); "
                               f"Tune's logs are in {search_dir.uri_of('tune')}")
        best = max((t for t in trials if t["value"] is not None), key=lambda t: t["value"])
        best_cfg = cfg.replace(**best["params"])
        header = (f"# The best of {len(trials)} trials of `ray-recall tune` ({search_dir.uri}): {metric} "
                  f"{best['value']:.4f} at epoch {best['epoch']} (trial {best['trial_id']}).\n"
                  f"# Searched: {', '.join(keys)}; this trial: {_describe(best['params'], keys)}.\n")
        search_dir.write_bytes((header + best_cfg.to_yaml()).encode(), "best.yaml")
        search_dir.write_bytes(_csv(trials, keys, metric).encode(), "trials.csv")
        seconds = time.perf_counter() - t0
        if parent:
            _close_children(parent, trials)
            parent.log_params({f"best.{k}": _short(v) for k, v in best["params"].items()})
            parent.log_metrics({f"best_{metric}": best["value"], "trials": len(trials), "search_seconds": seconds})
            parent.log_text(header + best_cfg.to_yaml(), "best.yaml")
            parent.set_tags({RUN_DIR_TAG: search_dir.uri})

    log(format_trials(trials, keys, metric))
    log(f"[tune] best: trial {best['trial_id']}, {metric} {best['value']:.4f} at epoch {best['epoch']} "
        f"({_describe(best['params'], keys)}); {len(trials)} trials in {seconds:.0f}s")
    log(f"[tune] its config: {search_dir.uri_of('best.yaml')}  (ray-recall pipeline --config "
        f"{search_dir.uri_of('best.yaml')})")
    return {"best": best, "best_config": search_dir.uri_of("best.yaml"), "trials": trials,
            "seconds": round(seconds, 1), "search_dir": search_dir.uri, "most_running": progress.most_running}


def _trials(grid, keys: list[str], metric: str, search_dir: Storage) -> list[dict]:
    out = []
    for r in grid:
        df = r.metrics_dataframe
        trial_id = os.path.basename(r.path.rstrip("/"))  # trial_dirname_creator: the trial id
        values = list(df[metric]) if df is not None and metric in df else []
        run = RunDir(search_dir.uri_of("trials", trial_id))
        finished = run.exists("model", "model.pt")
        entry = {"trial_id": trial_id, "params": {k: r.config[k] for k in keys if k in r.config},
                 "epochs": len(values), "value": max(values) if values else None,
                 "epoch": values.index(max(values)) + 1 if values else None,
                 "status": "error" if r.error else ("finished" if finished else "stopped by ASHA"),
                 "run_dir": run.uri}
        out.append(entry)
    return sorted(out, key=lambda t: -(t["value"] if t["value"] is not None else -1))


def format_trials(trials: list[dict], keys: list[str], metric: str) -> str:
    """The trials as a console table, best first."""
    cols = ["trial"] + keys + [metric, "epoch", "epochs", "status"]
    rows = [[t["trial_id"]] + [_short(t["params"].get(k, "")) for k in keys]
            + [f"{t['value']:.4f}" if t["value"] is not None else "-", str(t["epoch"] or "-"), str(t["epochs"]),
               t["status"]] for t in trials]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(cols), "-" * (sum(widths) + 2 * (len(cols) - 1))] + [line(r) for r in rows])


def _csv(trials: list[dict], keys: list[str], metric: str) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["trial_id"] + keys + [metric, "best_epoch", "epochs", "status", "run_dir"])
    for t in trials:
        w.writerow([t["trial_id"]] + [t["params"].get(k, "") for k in keys]
                   + [t["value"], t["epoch"], t["epochs"], t["status"], t["run_dir"]])
    return buf.getvalue()


_RUN_STATUS = {"finished": "FINISHED", "error": "FAILED"}  # a trial's end -> its MLflow run's


def _close_children(parent, trials: list[dict]) -> None:
    """Give every trial's child run the state its trial ended in: FINISHED when it wrote its model, KILLED when
    ASHA cut it off, FAILED when Tune recorded an error.

    A trial's own tracker writes FINISHED when its stage returns and nothing when it fails (`Tracker.finish`):
    Tune stops a trial by raising into it, at the last epoch racing the trial's own end, and the trial's
    process may be gone before its way out is done. Runs still RUNNING, and any a tracker of an older version
    left FAILED, are closed here.
    """
    by_dir = {t["run_dir"]: t for t in trials}
    runs = parent.client.search_runs([parent.experiment_id],
                                     filter_string=f"tags.mlflow.parentRunId = '{parent.run_id}'")
    for r in runs:
        trial = by_dir.get(r.data.tags.get(RUN_DIR_TAG))
        if r.info.status == "RUNNING" or (r.info.status == "FAILED" and trial is not None):
            status = _RUN_STATUS.get(trial["status"] if trial else None, "KILLED")  # ASHA's stop, or unknown
            if status != r.info.status:
                parent.client.set_terminated(r.info.run_id, status=status)


def load_space(path: str) -> dict:
    """A search-space YAML file (any URI)."""
    directory, name = os.path.split(path)
    store = Storage(directory or ".")
    if not store.exists(name):
        raise ConfigError(f"search space {path}: no such file")
    try:
        raw = yaml.safe_load(store.read_bytes(name).decode())
    except yaml.YAMLError as e:
        raise ConfigError(f"search space {path}: not valid YAML ({e})") from None
    return raw

