"""A private `ray start --head` for tests, and a teardown that leaves nothing running.

Tests that need a real head (job submission, autoscaling) must never meet the session's in-process
Ray or anyone else's Ray on the machine, and must never end with a bare `ray stop`, which kills
every Ray on the machine. So each head gets its own temp dir and its own ports, runs in its own
process group with its working directory inside the temp dir, and is stopped by process group and
then by PID: every process whose command line names the temp dir or whose working directory is
inside it. That also catches the nodes a fake-multinode autoscaler launches, since they inherit
the head's temp dir.
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
import yaml

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


def free_ports(n: int) -> list[int]:
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


def worker_port_range(width: int = 200) -> tuple[int, int]:
    """A free block below the kernel's ephemeral range and above Ray's default 10002-19999,
    so this head's workers never race the other clusters' workers (or free_ports) for a port."""
    for _ in range(50):
        lo = random.randrange(20000, 32000 - width)
        if all(_port_is_free(p) for p in range(lo, lo + width)):
            return lo, lo + width - 1
    raise RuntimeError("no free block of worker ports in 20000-32000")


def http_json(url: str, timeout: float = 10.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def processes_under(temp_dir: str) -> list[int]:
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
    while (left := processes_under(temp_dir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


class Head:
    """A `ray start --head --block` process group and the way to reach its job API."""

    def __init__(self, temp_dir: str, env: dict, proc: subprocess.Popen, dashboard: str, log_path: Path,
                 cmd: list[str], gcs_address: str):
        self.temp_dir, self.env, self.proc, self.dashboard, self.log_path, self.cmd, self.gcs_address = (
            temp_dir, env, proc, dashboard, log_path, cmd, gcs_address)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def session_log(self, name: str, n: int | None = 4000) -> str:
        """The last n characters (n=None: all) of a log of this head's session, e.g. monitor.log (the autoscaler)."""
        path = Path(self.temp_dir) / "session_latest" / "logs" / name
        try:
            text = path.read_text(errors="replace")
        except OSError:
            return ""
        return text if n is None else text[-n:]

    def job_info(self, submission_id: str) -> dict:
        return http_json(f"{self.dashboard}/api/jobs/{submission_id}")

    def job_logs(self, submission_id: str) -> str:
        return http_json(f"{self.dashboard}/api/jobs/{submission_id}/logs").get("logs", "")

    def alive_nodes(self) -> list[dict]:
        """The cluster's live nodes, from the dashboard's state API (no driver needed in the test process)."""
        reply = http_json(f"{self.dashboard}/api/v0/nodes?limit=1000&detail=false", timeout=10)
        return [n for n in reply["data"]["result"]["result"] if n.get("state") == "ALIVE"]

    def actors(self, class_name: str) -> list[dict]:
        """Every actor of a class this cluster has run, dead ones included (each names its node_id)."""
        reply = http_json(f"{self.dashboard}/api/v0/actors?limit=10000&detail=true", timeout=10)
        return [a for a in reply["data"]["result"]["result"] if a.get("class_name") == class_name]

    def submit(self, script: str, args: list[str], *, wait: bool, timeout: float = JOB_S,
               working_dir: bool = True) -> tuple[str, subprocess.CompletedProcess]:
        """`ray job submit` of `python <script> <args>` with the repository as working_dir.

        working_dir=False runs the repository's script in place instead (the package is installed in
        this interpreter's environment). For fake multinode clusters: their nodes share the head's
        session directory, and a node joining while the job runs unpacks the job's working_dir package
        again over the one the job's processes run in, deleting their working directory under them.
        """
        submission_id = f"rr_{Path(script).stem}_{uuid.uuid4().hex[:8]}"
        upload = ["--working-dir", str(REPO), "--runtime-env-json", json.dumps(RUNTIME_ENV)] if working_dir else []
        cmd = [RAY, "job", "submit", "--address", self.dashboard, "--submission-id", submission_id, *upload,
               *([] if wait else ["--no-wait"]), "--", "python", script if working_dir else str(REPO / script), *args]
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


def start_head(num_cpus: int = 2, fake_autoscaling: dict | None = None, multinode: bool = False) -> Head:
    """Start a private head and wait until its job API answers.

    A single-node head listens on 127.0.0.1 only (`ray_recall.runtime.LOCAL_ONLY_ENV`). One that other
    nodes join (`multinode`, for `add_node`, or `fake_autoscaling`) keeps Ray's cluster mode: it advertises
    the machine's address and its gRPC servers listen on every interface, as on a real cluster.

    fake_autoscaling: a fake_multinode launcher config. The head is then started with
    RAY_FAKE_CLUSTER=1 and --autoscaling-config, and the config's provider is pointed at this
    head's GCS port (the fake provider would otherwise join nodes to 6379, which may be anyone's).
    """
    from ray_recall.runtime import LOCAL_ONLY_ENV

    multinode = multinode or fake_autoscaling is not None
    temp_dir = tempfile.mkdtemp(prefix="rrh_", dir="/tmp")  # unix socket paths under it must stay < 108 bytes
    (gcs, dash, agent_http, agent_grpc, env_agent, client, node_mgr, obj_mgr, metrics) = free_ports(9)
    lo, hi = worker_port_range()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
           # The job's `python` resolves through the head's PATH: make it this interpreter,
           # which has ray_recall's dependencies installed.
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)  # the client gets --address; the head must not try to join anything
    env.pop(LOCAL_ONLY_ENV, None)
    if not multinode:
        env[LOCAL_ONLY_ENV] = "0"  # --node-ip-address 127.0.0.1 then holds: every port on loopback
    cmd = [RAY, "start", "--head", "--block", "--temp-dir", temp_dir, "--node-ip-address", "127.0.0.1",
           "--num-cpus", str(num_cpus), "--object-store-memory", str(500 * 1024**2), "--disable-usage-stats",
           "--port", str(gcs), "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
           "--dashboard-port", str(dash), "--dashboard-agent-listen-port", str(agent_http),
           "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(env_agent),
           "--ray-client-server-port", str(client), "--node-manager-port", str(node_mgr),
           "--object-manager-port", str(obj_mgr), "--metrics-export-port", str(metrics),
           "--min-worker-port", str(lo), "--max-worker-port", str(hi)]
    # In cluster mode the head resolves 127.0.0.1 to the machine's own address for the GCS; other
    # nodes use the address Ray itself picks, so that they meet the GCS where it listens.
    from ray._common.network_utils import node_ip_address_from_perspective

    gcs_address = f"{node_ip_address_from_perspective(None) if multinode else '127.0.0.1'}:{gcs}"
    if fake_autoscaling is not None:
        config = json.loads(json.dumps(fake_autoscaling))
        config["provider"]["gcs_address"] = gcs_address
        config_path = Path(temp_dir) / "autoscaling.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        cmd += ["--autoscaling-config", str(config_path)]
        # The autoscaler's default 5 s between decisions would dominate a short test.
        env.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})
    log_path = Path(temp_dir) / "head.log"
    with open(log_path, "wb") as log:
        # cwd=temp_dir: every process of this head then runs inside it, which is how teardown finds them.
        proc = subprocess.Popen(cmd, env=env, cwd=temp_dir, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    head = Head(temp_dir, env, proc, f"http://127.0.0.1:{dash}", log_path, cmd, gcs_address)
    head.multinode = multinode
    deadline = time.monotonic() + HEAD_START_S
    while True:
        if proc.poll() is not None:
            stop_head(head)
            pytest.fail(f"ray start exited with {proc.returncode}:\n{head.log_tail()}")
        try:
            # /api/version answers before the job module is ready; the job list needs the job API itself.
            http_json(f"{head.dashboard}/api/version", timeout=5)
            http_json(f"{head.dashboard}/api/jobs/", timeout=5)
            return head
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError, OSError):
            pass
        if time.monotonic() > deadline:
            stop_head(head)
            pytest.fail(f"the dashboard job API did not answer within {HEAD_START_S}s:\n{head.log_tail()}")
        time.sleep(1.0)


def stop_head(head: Head) -> None:
    """SIGTERM the head's process group, then SIGKILL it and any process still running in its temp dir.

    The grace period is short on purpose: gcs_server takes about 30 s to act on SIGTERM, and this
    head holds nothing worth a clean shutdown.
    """
    try:
        pgid = os.getpgid(head.proc.pid)
    except ProcessLookupError:
        pgid = None
    for sig, grace in ((signal.SIGTERM, 1), (signal.SIGKILL, 30)):
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
    _signal_all(processes_under(head.temp_dir), signal.SIGTERM)
    _signal_all(_wait_gone(head.temp_dir, 5), signal.SIGKILL)
    left = _wait_gone(head.temp_dir, 15)
    if not left:
        shutil.rmtree(head.temp_dir, ignore_errors=True)
    assert not left, f"processes of the head in {head.temp_dir} still running: {left}"


def add_node(head: Head, num_cpus: int = 2, timeout: float = 180) -> subprocess.Popen:
    """Start a second node joining `head` (its own temp dir and ports, inside the head's temp dir so that
    stop_head finds and stops its processes too); returns once the cluster counts it. Terminate it yourself.
    The head must have been started with multinode=True (a loopback-only head cannot be joined)."""
    assert head.multinode, "start_head(multinode=True) for a head that other nodes join"
    node_dir = Path(head.temp_dir) / f"node{len(head.alive_nodes()) + 1}"
    node_dir.mkdir()
    node_mgr, obj_mgr, metrics, agent_http, agent_grpc, env_agent = free_ports(6)
    lo, hi = worker_port_range()
    cmd = [RAY, "start", "--address", head.gcs_address, "--block", "--num-cpus", str(num_cpus), "--temp-dir",
           str(node_dir), "--object-store-memory", str(300 * 1024**2), "--disable-usage-stats",
           "--node-manager-port", str(node_mgr), "--object-manager-port", str(obj_mgr),
           "--metrics-export-port", str(metrics), "--dashboard-agent-listen-port", str(agent_http),
           "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(env_agent),
           "--min-worker-port", str(lo), "--max-worker-port", str(hi)]
    before = len(head.alive_nodes())
    node = subprocess.Popen(cmd, env=head.env, cwd=node_dir, stdout=open(node_dir / "node.log", "wb"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    while len(head.alive_nodes()) <= before:
        if node.poll() is not None or time.monotonic() > deadline:
            node.terminate()
            raise RuntimeError("the second node never joined:\n" + (node_dir / "node.log").read_text()[-3000:])
        time.sleep(1)
    return node
