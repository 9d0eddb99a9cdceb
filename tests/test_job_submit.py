"""The cluster path under a real `ray start --head`: `ray job submit` of the jobs, `serve deploy` of the endpoint.

This is the path a cluster user takes: the repository is uploaded as the job's working_dir and
`python jobs/<stage>.py` runs as the job's driver, joining the cluster through RAY_ADDRESS; then
cluster/serve.yaml goes to the same head through the dashboard's REST API. (The whole pipeline as
one job is submitted to the 2-node cluster of tests/test_multinode.py.)

The head is private to this module: its own temp dir, its own ports (so it never meets the
session's in-process Ray or anyone else's Ray on the machine), started in its own process group
and stopped by process group and by PID (tests/ray_head.py). A bare `ray stop` would kill every Ray
on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import tiny_config
from tests.ray_head import BIN, HEAD_START_S, JOB_S, REPO, Head, start_head, stop_head
from tests.serve_http import free_port

SERVE = str(BIN / "serve")
SERVE_READY_S = 240


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


def _serve_cli(head: Head, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([SERVE, *args, "--address", head.dashboard], env=head.env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.timeout(HEAD_START_S + SERVE_READY_S + 300)
def test_serve_deploy_of_the_cluster_config(ray_head, trained_run, tmp_path):
    """cluster/serve.yaml as shipped, but for its run_dir and port, through `serve deploy`: the endpoint answers
    like the run's offline index, `serve status` reports it running with autoscaling bounds from the file."""
    from ray_recall.serve.recaller import Recaller

    cfg, _ = trained_run
    config = yaml.safe_load((REPO / "cluster" / "serve.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    app = config["applications"][0]
    app["args"]["run_dir"] = os.path.abspath(cfg.run_dir)
    assert app["args"]["auth"] == "token"  # on in the cluster config; the nodes' environment has the token,
    token = "cluster-token-" + os.urandom(8).hex()  # here the app's runtime_env stands in for it
    app["runtime_env"] = {"env_vars": {"RAY_RECALL_TOKEN": token}}
    auth = {"authorization": f"Bearer {token}"}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    out = _serve_cli(ray_head, "deploy", str(path))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVE_READY_S
        while True:
            try:
                health = requests.get(f"{url}/healthz", timeout=5)
                if health.status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                status = _serve_cli(ray_head, "status")
                pytest.fail(f"{url}/healthz not ready after {SERVE_READY_S} s:\n{status.stdout}{status.stderr}")
            time.sleep(1.0)
        assert health.json()["run"] == os.path.abspath(cfg.run_dir)

        recaller = Recaller(cfg.run_dir)
        for user in (recaller.user_raw[0], recaller.user_raw[-1]):
            user = user.item() if hasattr(user, "item") else user
            r = requests.post(f"{url}/recall", json={"user_id": user, "k": 5}, headers=auth, timeout=30)
            assert r.status_code == 200, r.text
            assert [it["item_id"] for it in r.json()["items"]] == [it["item_id"] for it in recaller.recall(user, 5)]
        assert requests.post(f"{url}/recall", json={"user_id": user, "k": 5}, timeout=30).status_code == 401
        assert requests.get(f"{url}/openapi.json", timeout=30).json()["info"]["title"] == "ray_recall"

        status = _serve_cli(ray_head, "status")
        assert status.returncode == 0, status.stderr
        apps = yaml.safe_load(status.stdout)["applications"]
        assert apps[app["name"]]["status"] == "RUNNING", status.stdout
        deployment = apps[app["name"]]["deployments"]["RecallDeployment"]
        assert deployment["status"] == "HEALTHY", status.stdout
        bounds = app["deployments"][0]["autoscaling_config"]
        assert bounds["min_replicas"] <= deployment["replica_states"]["RUNNING"] <= bounds["max_replicas"], status.stdout
    finally:
        down = _serve_cli(ray_head, "shutdown", "-y")
        assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-2000:]


def test_head_listens_on_loopback_only(ray_head):
    """Every process of the private head (`ray start --node-ip-address 127.0.0.1` with Ray's single-machine
    mode: tests/ray_head.py) listens on 127.0.0.1 only: GCS, raylet, dashboard, agents, Ray Client server,
    the workers of the jobs and of Serve above."""
    from tests.ray_head import processes_under
    from tests.sockets import listeners

    expected = {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"}
    deadline = time.monotonic() + 60  # the raylet and its agents may come up after the job API answers
    while True:
        found = listeners(processes_under(ray_head.temp_dir))
        if expected <= {f.process for f in found}:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"not all of {sorted(expected)} listen: {sorted({f.process for f in found})}")
        time.sleep(1.0)
    names = " | ".join(sorted({f.process for f in found}))
    assert any(f.port == int(ray_head.dashboard.rsplit(":", 1)[1]) for f in found), names
    exposed = [str(f) for f in found if not f.loopback]
    assert not exposed, "listening beyond loopback:\n" + "\n".join(exposed)
