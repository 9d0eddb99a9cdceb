"""`ray-recall <command> --config ...`: the pipeline, one stage, or the endpoint.

    ray-recall pipeline --config configs/ml100k_dssm.yaml [--run-dir runs/x] [--set train.epochs=3] [--force]
    ray-recall train --config ...            (preprocess | train | embed | index | evaluate)
    ray-recall serve --run-dir runs/x [--port 8000]
    ray-recall recall --run-dir runs/x --user-id 1 [--k 10]
    ray-recall export --run-dir runs/x [--out DIR]   (the towers as ONNX, for serving outside Ray)
    ray-recall tune --config ... --space space.yaml [--num-samples 12] [--max-concurrent N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import yaml

from ray_recall.config import PipelineConfig
from ray_recall.errors import RayRecallError
from ray_recall.pipeline import check_config, run_pipeline, run_stage
from ray_recall.rundir import STAGES, RunDir
from ray_recall.runtime import VERBOSE_ENV, init_ray, quiet_library_warnings, verbose


def load_config(args) -> PipelineConfig:
    cfg = PipelineConfig.from_yaml(args.config) if args.config else PipelineConfig()
    overrides = {}
    for item in args.set or []:
        if "=" not in item:
            raise RayRecallError(f"--set {item!r}: expected key=value, e.g. train.epochs=3")
        key, value = item.split("=", 1)
        overrides[key] = yaml.safe_load(value)
    if args.run_dir:
        overrides["run_dir"] = args.run_dir
    return check_config(cfg.replace(**overrides) if overrides else cfg)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ray-recall", description="Train and serve recall models on Ray.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true",
                        help="show Ray's own logs and every worker's output too (or RAY_RECALL_VERBOSE=1)")
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("pipeline",) + STAGES:
        s = sub.add_parser(name, parents=[common],
                           help="run every stage" if name == "pipeline" else f"run the {name} stage")
        s.add_argument("--config", help="YAML config (defaults apply to missing keys)")
        s.add_argument("--run-dir", help="override run_dir (local path or URI)")
        s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.epochs=3")
        s.add_argument("--force", action="store_true", help="re-run stages even if their outputs are up to date")
        s.add_argument("--resume", action="store_true",
                       help="train: continue an interrupted run from its last checkpoint (same config, same run dir)")
        s.add_argument("--num-cpus", type=int, help="CPUs of the in-process Ray (ignored when joining a cluster)")
        s.add_argument("--samples", type=int, default=3, help="pipeline: sample recommendations to print")
    s = sub.add_parser("tune", help="search hyperparameters on Ray Tune (ASHA on the validation metric)", parents=[common])
    s.add_argument("--config", help="the base YAML config")
    s.add_argument("--space", required=True, help="YAML of config keys to distributions, e.g. train.lr: loguniform(1e-4, 1e-2)")
    s.add_argument("--run-dir", help="override run_dir of the base config (its data stage is shared by every trial)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of the base config")
    s.add_argument("--num-samples", type=int, default=12, help="trials (times every grid value)")
    s.add_argument("--max-concurrent", type=int, help="trials at a time (default: as many as the cluster's CPUs hold now)")
    s.add_argument("--grace-period", type=int, default=4, help="epochs before ASHA's first cut")
    s.add_argument("--out", help="the search directory (default <run_dir>-tune)")
    s.add_argument("--seed", type=int, default=0, help="the random search's seed")
    s.add_argument("--num-cpus", type=int, help="CPUs of the in-process Ray (ignored when joining a cluster)")
    s = sub.add_parser("serve", help="deploy the Ray Serve recall endpoint for a run", parents=[common])
    s.add_argument("--run-dir", required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--replicas", type=int, default=1)
    s = sub.add_parser("recall", help="top-K items for one user, without a server", parents=[common])
    s.add_argument("--run-dir", required=True)
    s.add_argument("--user-id", required=True)
    s.add_argument("--k", type=int, default=10)
    s = sub.add_parser("export", help="write the user and item towers as ONNX (needs ray_recall[export])", parents=[common])
    s.add_argument("--run-dir", required=True)
    s.add_argument("--out", help="where to write them (any URI; default <run-dir>/export)")
    return p


def print_samples(run_dir: str, n: int, k: int = 5) -> None:
    from ray_recall.serve.recaller import Recaller

    rec = Recaller(run_dir)
    print(f"\nSample recommendations (top {k}, seen items excluded):")
    for raw in rec.user_raw[:n]:
        history = rec.history(raw)
        titles = rec.titles[rec.dense_items(history[-3:]) - 1]
        print(f"  user {raw}: last watched {'; '.join(titles)}")
        for r in rec.recall(raw, k):
            print(f"      {r['score']:+.3f}  {r['title']}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
    if not verbose():
        quiet_library_warnings()
    try:
        return _main(args)
    except RayRecallError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _main(args) -> int:
    if args.command == "recall":
        from ray_recall.serve.recaller import Recaller

        user = yaml.safe_load(args.user_id)
        print(json.dumps(Recaller(args.run_dir).recall(user, args.k), indent=2))
        return 0
    if args.command == "export":
        from ray_recall.export import export_towers, summary

        print(summary(export_towers(args.run_dir, args.out)))
        return 0
    if args.command == "serve":
        from ray_recall.serve.app import serve_forever

        serve_forever(args.run_dir, host=args.host, port=args.port, replicas=args.replicas)
        return 0
    cfg = load_config(args)
    init_ray(num_cpus=args.num_cpus)
    if args.command == "tune":
        from ray_recall.tuning import load_space, search

        search(cfg, load_space(args.space), num_samples=args.num_samples, max_concurrent=args.max_concurrent,
               grace_period=args.grace_period, out=args.out, seed=args.seed)
        return 0
    if args.command == "pipeline":
        out = run_pipeline(cfg, force=args.force, resume=args.resume)
        print("\nStage timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in out["timings"].items()))
        if args.samples:
            print_samples(cfg.run_dir, args.samples)
        example = json.dumps({"user_id": RunDir(cfg.run_dir).read_user_vocab().first(1)[0], "k": 10})  # a user of the run
        print(f"\nRun directory: {cfg.run_dir}\nStart the endpoint:  ray-recall serve --run-dir {cfg.run_dir}\n"
              f"Then:  curl -s -X POST localhost:8000/recall -H 'content-type: application/json' -d '{example}'")
    else:
        run_stage(cfg, args.command, force=args.force, resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
