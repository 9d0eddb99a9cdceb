"""Shared fixtures: one local Ray for the whole session, tiny synthetic data, run directories."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
# No MLflow run per test pipeline (each new store costs seconds of migrations); the shared `trained_run` is tracked.
os.environ["RAY_RECALL_TRACKING"] = "0"
# Credentials for the local S3-compatible server of test_s3.py (it accepts any). Set before Ray starts,
# so its workers inherit them the way cluster nodes get theirs from their environment.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 4 logical CPUs on this 2-core box (so Train workers and Ray Data tasks never starve each other),
    listening on 127.0.0.1 only (tests/test_network.py checks it)."""
    import ray
    from ray.data import DataContext

    from ray_recall.runtime import loopback_only

    with loopback_only():
        ray.init(address="local", num_cpus=4, include_dashboard=False, object_store_memory=int(1e9),
                 log_to_driver=False, logging_level="ERROR")
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    yield ray
    ray.shutdown()


def tiny_config(run_dir, **overrides):
    """A fast pipeline config on planted synthetic data (a few seconds of training)."""
    from ray_recall.config import PipelineConfig

    raw = {
        "run_dir": str(run_dir),
        "data": {"source": "synthetic", "max_len": 20, "num_partitions": 2,
                 "synthetic": {"num_users": 300, "num_items": 200, "num_groups": 5, "mean_length": 20, "seed": 7}},
        "model": {"name": "dssm", "embedding_dim": 32, "params": {"feature_dim": 16, "hidden_units": [64]}},
        "train": {"mode": "listwise", "epochs": 4, "batch_size": 256, "num_negatives": 10, "lr": 0.005,
                  "cpus_per_worker": 1.0, "temperature": 0.1},
        "eval": {"ks": [10, 20]},
    }
    cfg = PipelineConfig.from_dict(raw)
    return cfg.replace(**overrides) if overrides else cfg


@pytest.fixture
def quiet_log():
    lines = []
    return lines.append


@pytest.fixture(scope="session")
def trained_run(ray_session, tmp_path_factory):
    """A tiny synthetic run with every stage done (preprocess, train, embed, index, evaluate), tracked in MLflow
    (<parent>/mlflow.db); shared read-only."""
    from ray_recall.pipeline import run_pipeline

    cfg = tiny_config(tmp_path_factory.mktemp("trained") / "run", **{"tracking.experiment": "tiny"})
    os.environ["RAY_RECALL_TRACKING"] = "1"  # this run is tracked (tests/test_tracking.py reads it back)
    try:
        out = run_pipeline(cfg, log=lambda *_: None)
    finally:
        os.environ["RAY_RECALL_TRACKING"] = "0"
    return cfg, out


@pytest.fixture
def s3():
    """A local S3-compatible server (moto) on 127.0.0.1 with a bucket "recall": (options to append to s3:// URIs,
    a pyarrow filesystem on the server); the server stops afterwards. Skipped without moto (the test extra)."""
    import socket

    import pyarrow.fs as pafs

    moto_server = pytest.importorskip("moto.server", reason="pip install 'moto[server]' (the test extra)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        opts = f"endpoint_override=127.0.0.1:{port}&scheme=http"
        fs, _ = pafs.FileSystem.from_uri(f"s3://recall?{opts}&allow_bucket_creation=true")
        fs.create_dir("recall")
        yield opts, fs
    finally:
        server.stop()
