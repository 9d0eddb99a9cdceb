"""Recall quality of every model x training recipe on MovieLens-100K, written to benchmarks/quality.md.

    .venv/bin/python benchmarks/quality_bench.py                     # every model and recipe, ~60 min on 2 cores
    .venv/bin/python benchmarks/quality_bench.py --models dssm sasrec --recipes shipped --epochs-scale 0.2 \
        --out /tmp/quality_smoke.md                                  # a quick smoke run
    .venv/bin/python benchmarks/quality_bench.py --work-dir runs/quality --resume   # continue an interrupted run

Protocol: leave-last-out (each user's last interaction is the test target, the one before it the
validation target), exact full ranking over all 1,682 items, reported with the items the user saw
before the target masked (what the evaluate stage reports) and unmasked.

The data stage runs once (Ray Data); every (model, recipe) pair then gets its own run directory with
that `data/` copied in and goes through the real train -> embed -> index -> evaluate stages (Ray
Train underneath), with the model's shipped config `configs/ml100k_<model>.yaml` and only the recipe's
keys overridden (RECIPES: the training modes for every model; for the causal models also per-prefix
training and the losses of all-position training). The masked metrics come from the evaluate stage; the unmasked ones from the
same `Evaluator` class run in the driver with `mask_seen=False`, so metrics.json keeps the masked
figures the stage wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from report import write_report as write_markdown

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

MODELS = ("dssm", "youtubednn", "gru4rec", "sasrec", "hstu", "mind", "comirec")
CAUSAL = ("gru4rec", "sasrec", "hstu")
# The per-prefix recipe the sequence models shipped with before all-position training (list-wise sampled
# softmax, 50 uniform negatives, batches of 256 samples, 6-8 epochs).
PER_PREFIX = {"train.targets": "per_prefix", "train.softmax": "sampled", "train.num_negatives": 50,
              "train.sampler": "uniform", "train.logq_correction": False, "train.in_batch_negatives": False,
              "train.batch_size": 256, "train.lr": 0.002, "train.epochs": 8, "train.early_stopping_patience": 0}
# name -> config keys over the shipped config; "shipped" is the config as it is.
RECIPES = {
    "shipped": {},
    "pointwise": {"train.mode": "pointwise", "train.shared_negatives": False},  # BCE and BPR take per-row negatives
    "pairwise": {"train.mode": "pairwise", "train.shared_negatives": False},
    "listwise": {"train.mode": "listwise"},
    "per prefix (before)": PER_PREFIX,
    "sampled, no logQ": {"train.softmax": "sampled", "train.logq_correction": False},
    "sampled + in-batch": {"train.softmax": "sampled", "train.in_batch_negatives": True},
    "exact softmax": {"train.softmax": "full", "train.num_negatives": 0, "train.in_batch_negatives": False},
    "inner product, T=1": {"model.params.normalize": False, "train.temperature": 1.0},
    "shared negatives": {"train.shared_negatives": True, "train.num_negatives": 1024},
    "per-sample negatives (before)": {"train.shared_negatives": False, "train.num_negatives": 50},
    # ComiRec's config before it trained on every position: per prefix, stopping on validation.
    "per prefix, lr 0.001 (before)": {**PER_PREFIX, "train.lr": 0.001, "train.epochs": 50,
                                       "train.early_stopping_patience": 3},
}


def recipes_of(model: str) -> list[str]:
    """The recipes a model is run with: its shipped config, the other modes, and for causal models the losses."""
    from ray_recall.config import PipelineConfig

    mode = PipelineConfig.from_yaml(config_path(model)).train.mode
    modes = [m for m in ("pointwise", "pairwise", "listwise") if m != mode]
    extra = ["per prefix (before)", "sampled, no logQ", "sampled + in-batch", "exact softmax",
             "inner product, T=1", "shared negatives"] if model in CAUSAL else []
    if model == "dssm":
        extra = ["per-sample negatives (before)"]
    if model == "comirec":
        extra = ["per prefix, lr 0.001 (before)"]
    return ["shipped", *modes, *extra]
METRICS = ("recall@10", "recall@50", "ndcg@10", "mrr@10")

# Measured elsewhere on the same split and protocol (ML-100K, leave-last-out, exact full ranking, seen
# items masked); quoted, not re-run: RecBole 1.2 requires ray<=2.6.3 and cannot be installed beside Ray 2.60.
RECBOLE = {"SASRec": {"recall@10": 0.160, "ndcg@10": 0.084, "recall@50": 0.440}, "BPR": {"recall@10": 0.106},
           "Pop": {"recall@10": 0.086}}
RECHUB = {"DSSM": 0.0265, "YouTubeDNN": 0.0042, "MIND": 0.0297, "GRU4Rec": 0.0}
TARGET_RATIO = 1.3  # every model's Recall@10 over most-popular's


def config_path(model: str) -> str:
    return os.path.join("configs", f"ml100k_{model}.yaml")


def data_key(cfg) -> str:
    """The data section without max_len: runs that agree on it share one preprocessed data/ directory.

    max_len only sets the history window cut at batch time (the stored samples do not depend on it),
    so it is patched into each run's copy of data/meta.json instead of re-running the data stage.
    """
    d = cfg.to_dict()["data"]
    d.pop("max_len")
    return json.dumps(d, sort_keys=True)


def prepare_run(cfg, base_data: str, log) -> None:
    """Copy the preprocessed data into cfg.run_dir and record it as this config's preprocess stage."""
    from ray_recall.rundir import RunDir

    run = RunDir(cfg.run_dir)
    shutil.rmtree(run.root, ignore_errors=True)
    os.makedirs(run.root)
    shutil.copytree(base_data, run.path("data"))
    meta = run.read_json("data", "meta.json")
    meta["max_len"] = cfg.data.max_len
    run.write_json(meta, "data", "meta.json")
    run.write_config(cfg)
    run.record_stage("preprocess", cfg, seconds=0.0, summary={"copied_from": base_data, "samples": meta["samples"]})


def unmasked_ranks(cfg) -> dict:
    """Test ranks of the model and of most-popular with nothing masked, by the evaluate stage's own Evaluator."""
    import numpy as np
    from ray_recall.stages.evaluate import Evaluator
    from ray_recall.rundir import RunDir

    run = RunDir(cfg.run_dir)
    ev = Evaluator(run.uri, mask_seen=False, batch_size=cfg.eval.batch_size, split="test")
    out = ev(run.read_parquet("data", "sequences", columns=["user_idx", "items", "length"]))
    return {"model": out["rank_model"], "popularity": out["rank_popularity"]}


def run_one(model: str, recipe: str, epochs_scale: float, work: str, base_data: str, log) -> dict:
    from ray_recall.config import PipelineConfig
    from ray_recall.metrics import metrics_from_ranks
    from ray_recall.pipeline import run_stage

    shipped = PipelineConfig.from_yaml(config_path(model))
    cfg = shipped.replace(**RECIPES[recipe])
    epochs = max(1, round(cfg.train.epochs * epochs_scale))
    slug = "".join(c if c.isalnum() else "_" for c in recipe)
    cfg = cfg.replace(**{"run_dir": os.path.join(work, f"{model}_{slug}"), "train.epochs": epochs})
    ks = sorted(set(cfg.eval.ks) | {10, 50})
    cfg = cfg.replace(**{"eval.ks": ks, "eval.mask_seen": True})
    prepare_run(cfg, base_data, log)
    t0 = time.perf_counter()
    train = run_stage(cfg, "train", force=True, log=log)
    for stage in ("embed", "index"):
        run_stage(cfg, stage, force=True, log=log)
    masked = run_stage(cfg, "evaluate", force=True, log=log)
    ranks = unmasked_ranks(cfg)
    history = train["history"]
    to_best = sum(h["epoch_seconds"] for h in history[: train["best_epoch"] + 1])
    return {
        "model": model, "mode": recipe, "natural": recipe == "shipped", "epochs": len(history),
        "recipe": describe(cfg), "train_seconds_to_best": round(to_best, 1),
        "masked": masked["metrics"][model], "unmasked": metrics_from_ranks(ranks["model"], ks),
        "pop_masked": masked["metrics"]["most_popular"], "pop_unmasked": metrics_from_ranks(ranks["popularity"], ks),
        "num_users": masked["num_users"], "best_epoch": train["best_epoch"] + 1,
        "val_recall@10": train.get("val_recall@10"), "train_seconds": train["train_seconds"],
        "fit_seconds": train["fit_seconds"], "pipeline_seconds": round(time.perf_counter() - t0, 1),
    }


def describe(cfg) -> str:
    """A recipe in words: what trains on what, against which negatives."""
    from ray_recall.models import get_model_class

    t = cfg.train
    causal = get_model_class(cfg.model.name).causal
    targets = "all positions" if t.targets == "all_positions" or (t.targets == "auto" and causal) else "per prefix"
    if t.mode == "listwise" and t.softmax == "full":
        loss = "exact softmax"
    else:
        loss = {"pointwise": "BCE", "pairwise": "BPR", "listwise": "sampled softmax"}[t.mode]
        loss += f", {t.num_negatives} x {t.sampler}" if t.num_negatives else ""
        loss += " shared" if t.shared_negatives else ""
        loss += " + in-batch" if t.in_batch_negatives and t.mode == "listwise" else ""
        loss += " + logQ" if t.mode == "listwise" and t.logq_correction else ""
    return f"{targets}; {loss}; T={t.temperature:g}"


# ---------------------------------------------------------------------------------------------
# The report


def _fmt(x: float) -> str:
    return f"{x:.4f}"


def hyperparameter_lines(models) -> list[str]:
    from ray_recall.config import PipelineConfig

    lines = ["| model | config | default mode | targets | D | max_len | model params | temperature | negatives | in-batch "
             "| epochs (most) | patience | batch | lr | weight decay |",
             "|---|---|---|---|---:|---:|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for m in models:
        c = PipelineConfig.from_yaml(config_path(m))
        t = c.train
        params = ", ".join(f"{k}={v}" for k, v in c.model.params.items()) or "(class defaults)"
        negatives = "exact softmax" if t.mode == "listwise" and t.softmax == "full" else \
            f"{t.num_negatives} x {t.sampler}" + (" + logQ" if t.mode == "listwise" and t.logq_correction else "")
        lines.append(f"| {m} | [`{config_path(m)}`](../{config_path(m)}) | {t.mode} | {describe(c).split(';')[0]} "
                     f"| {c.model.embedding_dim} | {c.data.max_len} | {params} | {t.temperature:g} | {negatives} "
                     f"| {'yes' if t.in_batch_negatives else 'no'} | {t.epochs} | {t.early_stopping_patience} "
                     f"| {t.batch_size} | {t.lr:g} | {t.weight_decay:g} |")
    return lines


def target_lines(results: list[dict], pop10: float) -> list[str]:
    """Each target of the issue, checked against the default (shipped) mode of each model."""
    lines = []
    natural = {r["model"]: r for r in results if r["natural"]}
    for m, r in natural.items():
        ratio = r["masked"]["recall@10"] / pop10
        verdict = "met" if ratio >= TARGET_RATIO else "**missed**"
        lines.append(f"- {m} ({r['mode']}): Recall@10 {_fmt(r['masked']['recall@10'])} = {ratio:.2f}x most-popular "
                     f"(target >= {TARGET_RATIO}x): {verdict}.")
    weak = [f"{r['model']}/{r['mode']} ({r['masked']['recall@10'] / pop10:.2f}x)" for r in results
            if r["masked"]["recall@10"] < TARGET_RATIO * pop10]
    lines.append("- Every model x mode pair at >= 1.3x most-popular: " +
                 ("met." if not weak else "**missed** by " + ", ".join(weak) + "."))
    for m in CAUSAL:
        if m not in natural:
            continue
        r = natural[m]
        ok = r["masked"]["recall@10"] >= 0.22 and r["masked"]["ndcg@10"] >= 0.12 and r["train_seconds_to_best"] <= 60
        lines.append(f"- {m} (shipped): Recall@10 {_fmt(r['masked']['recall@10'])}, NDCG@10 {_fmt(r['masked']['ndcg@10'])} "
                     f"after {r['train_seconds_to_best']:.0f} s of training to its best epoch (target: >= 0.22, >= 0.12, "
                     f"<= 60 s): {'met' if ok else '**missed**'}.")
    ref = RECBOLE["SASRec"]
    for m in ("gru4rec", "sasrec", "hstu"):
        if m not in natural:
            continue
        r = natural[m]["masked"]
        parts = [f"{k} {_fmt(r[k])} vs {ref[k]:.3f} ({'met' if r[k] >= ref[k] else '**missed**'})"
                 for k in ("recall@10", "ndcg@10", "recall@50")]
        lines.append(f"- {m} ({natural[m]['mode']}) against RecBole SASRec: " + "; ".join(parts) + ".")
    return lines


def write_report(path: str, results: list[dict], args, command: str, started: str, load_start, models, modes,
                 done: bool) -> None:
    import ray
    import torch

    if not results:
        return
    results = sorted(results, key=lambda r: (MODELS.index(r["model"]), list(RECIPES).index(r["mode"])))
    pop_m, pop_u = results[0]["pop_masked"], results[0]["pop_unmasked"]
    full = set(models) == set(MODELS) and modes is None and args.epochs_scale == 1.0
    lines = [
        "# Recall quality on MovieLens-100K: every model x training recipe",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} cores ({platform.machine()}), shared with other work (load average "
        f"{load_start[0]:.1f} at the start); Python {platform.python_version()}, PyTorch {torch.__version__}, "
        f"Ray {ray.__version__}; a local Ray started in-process, 1 Ray Train worker with 1 CPU. Recorded {started}.",
        "",
    ]
    if not done:
        lines += [f"**Partial: {len(results)} runs finished so far.**", ""]
    if not full:
        lines += [f"**Not the full benchmark**: models {list(models)}, recipes {modes or 'all'}, epochs x {args.epochs_scale}.", ""]
    lines += [
        "Protocol: leave-last-out on the 943 users (test = each user's last interaction, ordered by timestamp "
        "with ties broken by a fixed hash of (user, item); validation = the one before; training = every "
        "earlier position), exact full ranking over all 1,682 items, one test target per user. *Masked*: "
        "items the user saw before the target are excluded from the ranking (what `ray-recall evaluate` "
        "reports); *unmasked*: nothing excluded. Most-popular ranks items by their training-part count "
        "(ties by item id) under the same masking.",
        "",
        "Each row is the model's shipped config (**bold**) or the shipped config with one recipe's keys "
        "changed (`RECIPES` in the script), run through the real pipeline stages (train on Ray Train, "
        "1 worker with 1 CPU; embed; FAISS index; evaluate); the epoch with the best validation Recall@10 "
        "is kept, and training stops once it has not improved for the config's patience. The first four "
        "metrics are masked, the next four unmasked. Ratio = masked Recall@10 / most-popular's. "
        "*To best s*: seconds of training epochs up to and including the best epoch; train s: all epochs "
        "run; fit s adds Ray Train's start-up, validation and checkpointing.",
        "",
        "| model | recipe | what it trains | val R@10 | R@10 | R@50 | NDCG@10 | MRR@10 | unmasked R@10 | unm. R@50 "
        "| unm. NDCG@10 | unm. MRR@10 | ratio | best epoch / run | to best s | train s | fit s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        "| most-popular | - | - | - | " + " | ".join(_fmt(pop_m[k]) for k in METRICS) + " | "
        + " | ".join(_fmt(pop_u[k]) for k in METRICS) + " | 1.00 | - | - | - | - |",
    ]
    for r in results:
        mode = f"**{r['mode']}**" if r["natural"] else r["mode"]
        lines.append(f"| {r['model']} | {mode} | {r.get('recipe', '')} | {_fmt(r['val_recall@10'])} | "
                     + " | ".join(_fmt(r["masked"][k]) for k in METRICS)
                     + " | " + " | ".join(_fmt(r["unmasked"][k]) for k in METRICS)
                     + f" | {r['masked']['recall@10'] / pop_m['recall@10']:.2f} | {r['best_epoch']} / {r['epochs']} "
                     f"| {r.get('train_seconds_to_best', 0):.0f} | {r['train_seconds']:.0f} | {r['fit_seconds']:.0f} |")
    lines += ["", "## Targets", "", *target_lines(results, pop_m["recall@10"]), ""]
    lines += ["## Each model's default, by validation", "",
              "The shipped recipe of each model against the best other recipe on validation Recall@10 (the test "
              "figures never chose anything):", ""]
    for m in dict.fromkeys(r["model"] for r in results):
        rows = [r for r in results if r["model"] == m]
        shipped = next((r for r in rows if r["natural"]), None)
        other = max((r for r in rows if not r["natural"]), key=lambda r: r["val_recall@10"], default=None)
        if shipped and other:
            lines.append(f"- {m}: shipped {_fmt(shipped['val_recall@10'])}; best other, {other['mode']}: "
                         f"{_fmt(other['val_recall@10'])}.")
    lines.append("")
    rb = RECBOLE["SASRec"]
    lines += [
        "## References measured elsewhere on the same protocol",
        "",
        "Not re-run here: RecBole 1.2.1 pins `ray<=2.6.3` and cannot be installed beside Ray 2.60 (its wheel is "
        "installed with `--no-deps` only for the bundled MovieLens-100K files). The figures below were "
        "measured on the same split (leave-last-out, exact full ranking, seen items masked) and are quoted as "
        "given.",
        "",
        "| method | R@10 | NDCG@10 | R@50 | notes |",
        "|---|---:|---:|---:|---|",
        f"| RecBole 1.2 SASRec | {rb['recall@10']:.3f} | {rb['ndcg@10']:.3f} | {rb['recall@50']:.3f} | 400 s of CPU training |",
        f"| RecBole 1.2 BPR | {RECBOLE['BPR']['recall@10']:.3f} | | | |",
        f"| RecBole 1.2 Pop | {RECBOLE['Pop']['recall@10']:.3f} | | | (ours: {pop_m['recall@10']:.4f}; "
        "popularity ties are broken differently) |",
    ]
    for name, r10 in RECHUB.items():
        lines.append(f"| torch-rechub 0.9 {name} | {r10:.4f} | | | its example settings |")
    lines += ["", "## Hyperparameters", "",
              "The shipped configs' defaults, tuned on the validation targets (never on test); the other recipes "
              "change only their own keys (the temperature divides the BCE logits, the BPR margins and the "
              "softmax logits alike).", "", *hyperparameter_lines(models), ""]
    write_markdown(path, lines, echo=False)


def reproduce_command(argv: list[str]) -> str:
    """The command line as run, minus the options that only say where the run directories go."""
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else "python"
    out, skip = [python, argv[0]], False
    for a in argv[1:]:
        if skip:
            skip = False
        elif a == "--work-dir":
            skip = True
        elif not (a.startswith("--work-dir=") or a in ("--keep", "--resume")):
            out.append(a)
    return " ".join(shlex.quote(a) for a in out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--recipes", nargs="+", default=None, choices=list(RECIPES),
                    help="only these recipes (default: every recipe of each model, see recipes_of)")
    ap.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every config's epochs (smoke runs)")
    ap.add_argument("--out", default="benchmarks/quality.md")
    ap.add_argument("--work-dir", default=None, help="run directories go here (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the run directories")
    ap.add_argument("--resume", action="store_true",
                    help="with --work-dir: keep the runs already in its results.json and reuse its preprocessed data")
    args = ap.parse_args()
    if args.resume and not args.work_dir:
        ap.error("--resume needs --work-dir")
    command = reproduce_command(sys.argv)

    from ray_recall.config import PipelineConfig
    from ray_recall.runtime import init_ray
    from ray_recall.pipeline import run_stage

    work = os.path.abspath(args.work_dir or tempfile.mkdtemp(prefix="ray_recall_quality_"))
    os.makedirs(work, exist_ok=True)
    info_path = os.path.join(work, "run_info.json")
    if args.resume and os.path.exists(info_path):
        with open(info_path) as f:
            info = json.load(f)  # the date and load of the first start, not of the resumption
    else:
        info = {"started": time.strftime("%Y-%m-%d"), "load_start": list(os.getloadavg())}
        with open(info_path, "w") as f:
            json.dump(info, f)
    started, load_start = info["started"], info["load_start"]
    print(f"[quality] run directories under {work}", flush=True)
    init_ray(quiet=True)

    bases: dict[str, str] = {}
    for m in args.models:
        cfg = PipelineConfig.from_yaml(config_path(m))
        key = data_key(cfg)
        if key not in bases:
            base = cfg.replace(run_dir=os.path.join(work, f"data_{len(bases)}"))
            print(f"[quality] preprocess once for {m} (and every model with the same data section)", flush=True)
            run_stage(base, "preprocess", force=not args.resume, log=lambda s: print("  " + s, flush=True))
            bases[key] = os.path.join(base.run_dir, "data")

    results = []
    results_path = os.path.join(work, "results.json")
    if args.resume and os.path.exists(results_path):
        with open(results_path) as f:
            results = [r for r in json.load(f) if r["model"] in args.models]
        print(f"[quality] resuming: {len(results)} runs already done", flush=True)
    done_pairs = {(r["model"], r["mode"]) for r in results}
    plan = {m: [r for r in recipes_of(m) if args.recipes is None or r in args.recipes] for m in args.models}
    total = sum(len(v) for v in plan.values())
    t_all = time.perf_counter()
    for m in args.models:
        base_data = bases[data_key(PipelineConfig.from_yaml(config_path(m)))]
        for mode in plan[m]:
            if (m, mode) in done_pairs:
                continue
            print(f"[quality] {len(results) + 1}/{total}: {m} {mode}", flush=True)
            quiet = lambda s: print("  " + s.splitlines()[0], flush=True)  # noqa: E731  one line per stage
            r = run_one(m, mode, args.epochs_scale, work, base_data, quiet)
            results.append(r)
            print(f"[quality] {m} {mode}: masked R@10 {r['masked']['recall@10']:.4f} R@50 {r['masked']['recall@50']:.4f} "
                  f"NDCG@10 {r['masked']['ndcg@10']:.4f} | unmasked R@10 {r['unmasked']['recall@10']:.4f} | "
                  f"most-popular {r['pop_masked']['recall@10']:.4f} | train {r['train_seconds']:.0f}s "
                  f"(elapsed {time.perf_counter() - t_all:.0f}s)", flush=True)
            with open(results_path, "w") as f:
                json.dump(results, f, indent=1)
            write_report(args.out, results, args, command, started, load_start, args.models, args.recipes, done=False)
    write_report(args.out, results, args, command, started, load_start, args.models, args.recipes, done=True)
    print(open(args.out).read())
    if not args.keep and not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
