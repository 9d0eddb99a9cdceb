"""The job entry points under a real `ray start --head` and a real `ray job submit`.

This is the path a cluster user takes: the repository is uploaded as the job's working_dir and
`python jobs/<stage>.py` runs as the job's driver, joining the cluster through RAY_ADDRESS.

The head is private to this module: its own temp dir, its own ports (so it never meets the
session's in-process Ray or anyone else's Ray on the machine), started in its own process group
and stopped by process group and by PID. A bare `ray stop` would kill every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray") if (BIN / "ray").exists() else shutil.which("ray")
# Everything the job needs is in the package and jobs/. Ray 2.60 already skips .git and .venv and
# honours .gitignore files for working_dir uploads; listing them keeps the upload small on versions
# or settings (RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1) that do not.
RUNTIME_ENV = {"excludes": [".venv", "runs", ".git", ".pytest_cache"]}
HEAD_START_S = 180
JOB_S = 900
POLL_S = 2.0


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports, all held open together so the kernel cannot hand out one twice."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
        return True


def _worker_port_range(width: int = 200) -> tuple[int, int]:
    """A free block below the kernel's ephemeral range and above Ray's default 10002-19999,
    so this head's workers never race the other clusters' workers (or _free_ports) for a port."""
    for _ in range(50):
        lo = random.randrange(20000, 32000 - width)
        if all(_port_is_free(p) for p in range(lo, lo + width)):
            return lo, lo + width - 1
    raise RuntimeError("no free block of worker ports in 20000-32000")


def _http_json(url: str, timeout: float = 10.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def _processes_under(temp_dir: str) -> list[int]:
    """PIDs that belong to the head started in temp_dir.

    Ray workers rename themselves (`ray::IDLE`, `ray::JobSupervisor`), so their command line does
    not name the temp dir; but every process of this head runs with its working directory inside
    it (the head is started there; job drivers run in its runtime_resources/), so check both.
    """
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:  # exited meanwhile, or not ours to inspect
            continue
        if temp_dir in cmdline or cwd == temp_dir or cwd.startswith(temp_dir + "/"):
            pids.append(int(entry))
    return pids


def _signal_all(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(temp_dir: str, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := _processes_under(temp_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


class Head:
    """A `ray start --head --block` process group and the way to reach its job API."""

    def __init__(self, temp_dir: str, env: dict, proc: subprocess.Popen, dashboard: str, log_path: Path, cmd: list[str]):
        self.temp_dir, self.env, self.proc, self.dashboard, self.log_path, self.cmd = (
            temp_dir, env, proc, dashboard, log_path, cmd)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def job_info(self, submission_id: str) -> dict:
        return _http_json(f"{self.dashboard}/api/jobs/{submission_id}")

    def job_logs(self, submission_id: str) -> str:
        return _http_json(f"{self.dashboard}/api/jobs/{submission_id}/logs").get("logs", "")

    def submit(self, script: str, args: list[str], *, wait: bool, timeout: float = JOB_S) -> tuple[str, subprocess.CompletedProcess]:
        """`ray job submit` of `python <script> <args>` with the repository as working_dir."""
        submission_id = f"rr_{Path(script).stem}_{uuid.uuid4().hex[:8]}"
        cmd = [RAY, "job", "submit", "--address", self.dashboard, "--submission-id", submission_id,
               "--working-dir", str(REPO), "--runtime-env-json", json.dumps(RUNTIME_ENV),
               *([] if wait else ["--no-wait"]), "--", "python", script, *args]
        out = subprocess.run(cmd, env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        return submission_id, out

    def wait_job(self, submission_id: str, timeout: float = JOB_S) -> dict:
        """Poll the job until it reaches a terminal state; a hang fails here rather than stalling CI."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job_info(submission_id)
            if info["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
                return info
            if time.monotonic() > deadline:
                pytest.fail(f"job {submission_id} still {info['status']} after {timeout:.0f}s:\n"
                            f"{self.job_logs(submission_id)[-4000:]}")
            time.sleep(POLL_S)


def _start_head() -> Head:
    temp_dir = tempfile.mkdtemp(prefix="rrh_", dir="/tmp")  # unix socket paths under it must stay < 108 bytes
    (gcs, dash, agent_http, agent_grpc, env_agent, client, node_mgr, obj_mgr, metrics) = _free_ports(9)
    lo, hi = _worker_port_range()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
           # The job's `python` resolves through the head's PATH: make it this interpreter,
           # which has ray_recall's dependencies installed.
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)  # the client gets --address; the head must not try to join anything
    cmd = [RAY, "start", "--head", "--block", "--temp-dir", temp_dir, "--node-ip-address", "127.0.0.1",
           "--num-cpus", "2", "--object-store-memory", str(500 * 1024**2), "--disable-usage-stats",
           "--port", str(gcs), "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
           "--dashboard-port", str(dash), "--dashboard-agent-listen-port", str(agent_http),
           "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(env_agent),
           "--ray-client-server-port", str(client), "--node-manager-port", str(node_mgr),
           "--object-manager-port", str(obj_mgr), "--metrics-export-port", str(metrics),
           "--min-worker-port", str(lo), "--max-worker-port", str(hi)]
    log_path = Path(temp_dir) / "head.log"
    with open(log_path, "wb") as log:
        # cwd=temp_dir: every process of this head then runs inside it, which is how teardown finds them.
        proc = subprocess.Popen(cmd, env=env, cwd=temp_dir, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    head = Head(temp_dir, env, proc, f"http://127.0.0.1:{dash}", log_path, cmd)
    deadline = time.monotonic() + HEAD_START_S
    while True:
        if proc.poll() is not None:
            _stop_head(head)
            pytest.fail(f"ray start exited with {proc.returncode}:\n{head.log_tail()}")
        try:
            # /api/version answers before the job module is ready; the job list needs the job API itself.
            _http_json(f"{head.dashboard}/api/version", timeout=5)
            _http_json(f"{head.dashboard}/api/jobs/", timeout=5)
            return head
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError, OSError):
            pass
        if time.monotonic() > deadline:
            _stop_head(head)
            pytest.fail(f"the dashboard job API did not answer within {HEAD_START_S}s:\n{head.log_tail()}")
        time.sleep(1.0)


def _stop_head(head: Head) -> None:
    """SIGTERM the head's process group, then SIGKILL it and any process still running in its temp dir.

    The grace period is short on purpose: gcs_server takes about 30 s to act on SIGTERM, and this
    head holds nothing worth a clean shutdown.
    """
    try:
        pgid = os.getpgid(head.proc.pid)
    except ProcessLookupError:
        pgid = None
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 30)):
        if pgid is not None:
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
        try:
            head.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            if sig == signal.SIGKILL:
                raise
    # Ray workers put themselves in their own process groups; they still run in the temp dir.
    _signal_all(_processes_under(head.temp_dir), signal.SIGTERM)
    _signal_all(_wait_gone(head.temp_dir, 5), signal.SIGKILL)
    left = _wait_gone(head.temp_dir, 15)
    if not left:
        shutil.rmtree(head.temp_dir, ignore_errors=True)
    assert not left, f"processes of the head in {head.temp_dir} still running: {left}"


@pytest.fixture(scope="module")
def ray_head():
    head = _start_head()
    try:
        yield head
    finally:
        _stop_head(head)


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
