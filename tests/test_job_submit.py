"""The job entry points under a real `ray start --head` and a real `ray job submit`.

This is the path a cluster user takes: the repository is uploaded as the job's working_dir and
`python jobs/<stage>.py` runs as the job's driver, joining the cluster through RAY_ADDRESS.

The head is private to this module: its own temp dir, its own ports (so it never meets the
session's in-process Ray or anyone else's Ray on the machine), started in its own process group
and stopped by process group and by PID (tests/ray_head.py). A bare `ray stop` would kill every Ray
on the machine.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import tiny_config
from tests.ray_head import HEAD_START_S, JOB_S, Head, start_head, stop_head


@pytest.fixture(scope="module")
def ray_head():
    head = start_head()
    try:
        yield head
    finally:
        stop_head(head)


def _write_config(tmp_path: Path, run_dir: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_config(run_dir, **{"train.epochs": 2}).to_yaml())
    return path


def _assert_succeeded(head: Head, submission_id: str, out: subprocess.CompletedProcess | None = None) -> dict:
    info = head.wait_job(submission_id)
    detail = (out.stdout[-3000:] + out.stderr[-3000:]) if out else head.job_logs(submission_id)[-4000:]
    assert info["status"] == "SUCCEEDED", f"{submission_id}: {info['status']} {info.get('message')}\n{detail}"
    return info


@pytest.mark.timeout(HEAD_START_S + JOB_S + 120)
def test_pipeline_job_submit(ray_head, tmp_path):
    """Every stage as one job: the blocking submit streams the driver's output and succeeds."""
    run_dir = tmp_path / "run"
    cfg_path = _write_config(tmp_path, run_dir)
    submission_id, out = ray_head.submit(
        "jobs/pipeline.py", ["--config", str(cfg_path), "--run-dir", str(run_dir), "--samples", "0"], wait=True)
    assert out.returncode == 0, f"ray job submit exited {out.returncode}:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    _assert_succeeded(ray_head, submission_id, out)
    assert "[evaluate]" in out.stdout, out.stdout[-4000:]  # the driver's own output reached the client

    metrics = json.loads((run_dir / "metrics.json").read_text())
    model = tiny_config(run_dir).model.name
    for name in (model, "most_popular"):
        for key in ("recall@10", "ndcg@10", "mrr@10", "recall@20"):
            assert 0.0 <= metrics["metrics"][name][key] <= 1.0, (name, key, metrics)
    assert metrics["num_users"] > 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"preprocess", "train", "embed", "index", "evaluate"}


@pytest.mark.timeout(2 * JOB_S + 120)
def test_stages_as_separate_jobs(ray_head, tmp_path):
    """preprocess and train as two jobs sharing a run dir: the second reads what the first wrote."""
    run_dir = tmp_path / "run"
    cfg_path = _write_config(tmp_path, run_dir)
    args = ["--config", str(cfg_path), "--run-dir", str(run_dir)]

    pre_id, out = ray_head.submit("jobs/preprocess.py", args, wait=False, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    _assert_succeeded(ray_head, pre_id)
    assert (run_dir / "data" / "meta.json").exists()
    assert not (run_dir / "model").exists()
    pre_finished = json.loads((run_dir / "manifest.json").read_text())["stages"]["preprocess"]["finished_at"]

    train_id, out = ray_head.submit("jobs/train.py", args, wait=False, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    info = _assert_succeeded(ray_head, train_id)
    assert str(run_dir) in info["entrypoint"]
    logs = ray_head.job_logs(train_id)
    assert "[train]" in logs and "best epoch" in logs, logs[-4000:]
    assert str(run_dir) in logs, logs[-4000:]  # the driver's log names the shared run dir it trained from
    assert "[data]" not in logs, "the train job re-ran preprocessing instead of reading the first job's output"

    assert (run_dir / "model" / "model.pt").exists()
    training = json.loads((run_dir / "model" / "training.json").read_text())
    assert training["history"], training
    cfg = tiny_config(run_dir, **{"train.epochs": 2})
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert set(stages) == {"preprocess", "train"}
    # Both jobs saw the same config: each recorded the hash of the sections it depends on.
    assert stages["preprocess"]["config_hash"] == cfg.section_hash("data")
    assert stages["train"]["config_hash"] == cfg.section_hash("data", "model", "train")
    assert stages["preprocess"]["finished_at"] == pre_finished  # the train job left the data stage alone
