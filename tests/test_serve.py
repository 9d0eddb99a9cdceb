"""The Ray Serve endpoint over real HTTP: answers match `Recaller` in-process; bad input is 404/422, never 500."""

from __future__ import annotations

import os

import pytest
import requests

from tests.serve_http import free_port, wait_ready

APP = "ray_recall_test"
K = 7


@pytest.fixture(scope="module")
def endpoint(trained_run):
    """(base URL, run config): one Serve app on a free port for the whole module, deleted afterwards."""
    from ray import serve

    from ray_recall.serve.app import build_app

    cfg, _ = trained_run
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(cfg.run_dir), name=APP, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, timeout=60)
        yield url, cfg
    finally:
        serve.delete(APP)
        serve.shutdown()


@pytest.fixture(scope="module")
def recaller(trained_run):
    from ray_recall.serve.recaller import Recaller

    return Recaller(trained_run[0].run_dir)


def _users(recaller, n=4):
    """A few original user ids spread over the vocabulary, as plain Python values."""
    raw = recaller.user_raw
    picks = [raw[i] for i in sorted({0, len(raw) // 3, 2 * len(raw) // 3, len(raw) - 1})][:n]
    return [u.item() if hasattr(u, "item") else u for u in picks]


def _post(url, body=None, **kw):
    return requests.post(f"{url}/recall", json=body, timeout=30, **kw)


def _assert_same(got: list[dict], want: list[dict]):
    assert [g["item_id"] for g in got] == [w["item_id"] for w in want]
    assert [g["title"] for g in got] == [w["title"] for w in want]
    for g, w in zip(got, want):
        assert g["score"] == pytest.approx(w["score"], abs=1e-5)


def test_healthz(endpoint, recaller):
    url, cfg = endpoint
    r = requests.get(f"{url}/healthz", timeout=30)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["run"] == os.path.abspath(cfg.run_dir)
    assert body["items"] == recaller.info["items"] and body["users"] == recaller.info["users"]


def test_recall_matches_offline_and_excludes_seen(endpoint, recaller):
    url, _ = endpoint
    for user in _users(recaller):
        r = _post(url, {"user_id": user, "k": K})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["user_id"] == user
        assert len(body["items"]) == K
        _assert_same(body["items"], recaller.recall(user, K))
        seen = set(recaller.history(user))
        assert seen, f"user {user} has no history: the test would prove nothing"
        assert not seen & {it["item_id"] for it in body["items"]}


def test_recall_defaults(endpoint, recaller):
    url, _ = endpoint
    user = _users(recaller)[0]
    r = _post(url, {"user_id": user})
    assert r.status_code == 200, r.text
    _assert_same(r.json()["items"], recaller.recall(user, 10, exclude_seen=True))


def test_recall_with_seen_items(endpoint, recaller):
    url, _ = endpoint
    for user in _users(recaller):
        r = _post(url, {"user_id": user, "k": K, "exclude_seen": False})
        assert r.status_code == 200, r.text
        assert len(r.json()["items"]) == K
        _assert_same(r.json()["items"], recaller.recall(user, K, exclude_seen=False))


def test_unknown_user_is_404_naming_it(endpoint):
    url, _ = endpoint
    for user in ("no-such-user", 987654321):
        r = _post(url, {"user_id": user})
        assert r.status_code == 404, r.text
        assert repr(user) in r.json()["detail"]


@pytest.mark.parametrize("body", [
    {"user_id": 1, "k": 0},
    {"user_id": 1, "k": 1001},
    {"user_id": 1, "k": "ten"},
    {"user_id": 1, "k": 2.5},
    {"k": 10},
    {"user_id": None},
    {"user_id": True},
    {"user_id": [1]},
    {"user_id": 1, "exclude_seen": "maybe"},
    {"user_id": 1, "topk": 5},
    [1, 2],
], ids=["k0", "k1001", "k-str", "k-float", "no-user", "user-null", "user-bool", "user-list", "exclude-str",
        "extra-key", "not-object"])
def test_invalid_body_is_422(endpoint, body):
    url, _ = endpoint
    r = _post(url, body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail and all(d["msg"] for d in detail)


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"user_id": 1,}'], ids=["garbage", "empty", "trailing-comma"])
def test_malformed_json_is_422(endpoint, raw):
    url, _ = endpoint
    r = requests.post(f"{url}/recall", data=raw, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_wrong_method_and_path_are_not_500(endpoint):
    url, _ = endpoint
    assert requests.get(f"{url}/recall", timeout=30).status_code == 405
    assert requests.post(f"{url}/nope", json={}, timeout=30).status_code == 404


def test_openapi_schema_describes_the_endpoint(endpoint):
    """FastAPI's schema is served: /recall takes the request model, /healthz is listed, 422 is documented."""
    url, _ = endpoint
    r = requests.get(f"{url}/openapi.json", timeout=30)
    assert r.status_code == 200, r.text
    spec = r.json()
    assert spec["info"]["title"] == "ray_recall"
    assert {"/recall", "/healthz"} <= set(spec["paths"]), sorted(spec["paths"])
    recall = spec["paths"]["/recall"]["post"]
    body_ref = recall["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    request_schema = spec["components"]["schemas"][body_ref.rsplit("/", 1)[-1]]
    assert {"user_id", "history", "k", "exclude_seen", "exclude"} <= set(request_schema["properties"])
    assert "422" in recall["responses"]


def test_endpoint_listens_on_loopback_only(endpoint):
    """The Serve controller, proxy and replica of the session's loopback Ray listen on 127.0.0.1 only, the
    replica's inter-deployment gRPC server included (Ray Serve 2.60 starts it on every interface; the
    deployment binds it to the node's address: serve/app.py `_inter_deployment_grpc_on_loopback`)."""
    import ray

    from tests.sockets import listeners, with_descendants

    node = ray._private.worker._global_node
    ray_pids = with_descendants([p.process.pid for infos in node.all_processes.values() for p in infos])
    serve_sockets = [f for f in listeners(ray_pids) if f.process.startswith(("ray::Serve", "ray::ProxyActor"))]
    replica = [f for f in serve_sockets if f.process.startswith("ray::ServeReplica")]
    assert len(replica) >= 2, f"the replica's core-worker and inter-deployment gRPC servers: {serve_sockets}"
    assert any(f.port == int(endpoint[0].rsplit(":", 1)[1]) for f in serve_sockets), serve_sockets
    exposed = [str(f) for f in serve_sockets if not f.loopback]
    assert not exposed, "listening beyond loopback:\n" + "\n".join(exposed)


def test_vocabulary_lookup_of_request_ids_is_bounded_and_exact():
    """Request ids are normalized one by one to the vocabulary's type: no conversion of the whole vocabulary
    (the cost of a 1M-character id used to be 4 bytes x its length x the vocabulary size), exact matches only."""
    import numpy as np

    from ray_recall.vocab import Vocabulary

    ints = Vocabulary(np.arange(1, 1_000_001, dtype=np.int64) * 10, "item")
    assert ints.encode([50, "50", "050", 2**63, -(2**70), "x" * 1_000_000, True, 10_000_000, 7]).tolist() == \
        [5, 5, 0, 0, 0, 0, 0, 1_000_000, 0]
    names = Vocabulary(np.array(sorted(f"item-{i}" for i in range(1000)), dtype=object), "item")
    want = names.ids.tolist().index("item-7") + 1
    assert names.encode(["item-7", "x" * 1_000_000, 7, None, 1.5]).tolist() == [want, 0, 0, 0, 0]
    digits = Vocabulary(np.array(["10", "7"], dtype=object), "item")
    assert digits.encode([7, 10, "7"]).tolist() == [2, 1, 2]  # 7 names the item "7"
    fixed = Vocabulary(np.array(["ab", "cd"]), "item")  # fixed-width: longer values cannot match
    assert fixed.encode(["cd", "cdx" * 1000, "ab"]).tolist() == [2, 0, 1]


def _replica_log_lines(app: str) -> list[str]:
    """Every line the replicas of Serve application `app` wrote to their log files in this session."""
    import glob

    import ray

    logs = ray._private.worker._global_node.get_logs_dir_path()
    lines = []
    for path in glob.glob(os.path.join(logs, "serve", f"replica_{app}_*.log")):
        with open(path, errors="replace") as f:
            lines += f.read().splitlines()
    return lines


def test_requests_log_nothing_and_an_internal_error_one_line_with_its_request_id(endpoint, recaller, tmp_path):
    """Answered requests (200, 404, 422) leave no line in the replica's log (the access log is off); an internal
    error, here from a run whose index names items the run does not have (its checksums re-recorded, as a tool
    that rewrites a file does), is a 500 naming the request id and one ERROR line with it, no traceback."""
    import shutil
    import time
    import uuid

    import numpy as np
    from ray import serve

    from ray_recall.rundir import RunDir
    from ray_recall.serve.app import build_app

    url, cfg = endpoint
    user = _users(recaller, 1)[0]
    answered = []
    for body, status in (({"user_id": user, "k": 3}, 200), ({"user_id": "nobody", "k": 3}, 404), ({"k": 3}, 422)):
        rid = f"rr-{status}-{uuid.uuid4().hex[:8]}"
        r = _post(url, body, headers={"x-request-id": rid})
        assert r.status_code == status and r.headers.get("x-request-id") == rid, r.text
        answered.append(rid)

    broken = tmp_path / "broken"
    shutil.copytree(cfg.run_dir, broken)
    ids_path = broken / "index" / "item_ids.npy"
    np.save(ids_path, np.load(ids_path) + 10**6, allow_pickle=False)
    RunDir(str(broken)).record_files("index")
    app = "broken_run"
    serve.run(build_app(str(broken)), name=app, route_prefix="/broken")
    try:
        wait_ready(url, ("/broken",), timeout=120)
        rid = f"rr-500-{uuid.uuid4().hex[:8]}"
        r = requests.post(f"{url}/broken/recall", json={"user_id": user, "k": 3}, headers={"x-request-id": rid},
                          timeout=30)
        assert r.status_code == 500 and rid in r.json()["detail"], r.text
        deadline = time.monotonic() + 30  # the log file is written a moment later
        while not (lines := [line for line in _replica_log_lines(app) if rid in line]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(lines) == 1 and "500" in lines[0] and "IndexError" in lines[0], lines
        assert not [line for line in _replica_log_lines(app) if "Traceback" in line]
    finally:
        serve.delete(app)
    assert not [line for line in _replica_log_lines(APP) if any(rid in line for rid in answered)]


class _SlowProxy:
    """A TCP forwarder to `target` that holds each chunk of the server's answers for `delay` seconds: a slow store."""

    def __init__(self, target: int, delay: float):
        import socket
        import threading

        self.target, self.delay = target, delay
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket
        import threading

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, upstream, 0.0), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.delay), daemon=True).start()

    @staticmethod
    def _pump(src, dst, delay: float):
        import time

        try:
            while data := src.recv(65536):
                time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    def close(self):
        self.server.close()


def test_healthz_answers_503_at_once_while_the_first_run_loads(endpoint, recaller, s3):
    """The first replica of an app loads its run in the background: meanwhile /healthz answers 503 "starting"
    at once (Serve's proxy would otherwise hold it until the load ends), a recall sent then waits and is
    answered, and /healthz turns 200 once the run is in. The run is read from S3 through a slow link."""
    import threading
    import time

    import pyarrow.fs as pafs
    from ray import serve

    from ray_recall.serve.app import build_app

    url, cfg = endpoint
    opts, fs = s3
    pafs.copy_files(cfg.run_dir, "recall/runs/served", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    proxy = _SlowProxy(int(opts.split("endpoint_override=127.0.0.1:")[1].split("&")[0]), delay=0.05)
    app = "slow_start"
    user = _users(recaller, 1)[0]
    recalled = []
    try:
        serve.run(build_app(f"s3://recall/runs/served?endpoint_override=127.0.0.1:{proxy.port}&scheme=http"),
                  name=app, route_prefix="/slow")
        asker = threading.Thread(target=lambda: recalled.append(
            requests.post(f"{url}/slow/recall", json={"user_id": user, "k": 3}, timeout=300)), daemon=True)
        answers, deadline = [], time.monotonic() + 300
        while time.monotonic() < deadline:
            t = time.monotonic()
            r = requests.get(f"{url}/slow/healthz", timeout=30)
            if r.status_code == 404:  # the proxy has not learnt the route yet
                continue
            answers.append((r.status_code, time.monotonic() - t, r.json()))
            if not asker.is_alive() and not recalled:
                asker.start()
            if r.status_code == 200:
                break
            time.sleep(0.2)
        assert answers[0][0] == 503 and answers[0][2]["status"] == "starting", answers[:3]
        assert answers[-1][0] == 200 and answers[-1][2]["run"].startswith("s3://recall/runs/served"), answers[-1]
        assert max(dt for status, dt, _ in answers if status == 503) < 2.0, answers
        asker.join(timeout=300)
        assert recalled and recalled[0].status_code == 200, recalled and recalled[0].text
        assert [it["item_id"] for it in recalled[0].json()["items"]] == [it["item_id"] for it in recaller.recall(user, 3)]
    finally:
        serve.delete(app)
        proxy.close()


def test_the_serve_command_answers_shows_its_own_lines_only_and_stops_on_ctrl_c(trained_run, recaller, tmp_path):
    """`ray-recall serve` as a user runs it, with a Ray of its own started in-process: it answers on the port it was
    given; its console holds the project's lines only (not Serve's start-up lines, nor Ray's report of the Serve
    controller killed under a pending call); Ctrl-C stops it, with nothing of its Ray left running."""
    import signal
    import subprocess
    import sys
    import time

    from tests.ray_head import processes_under

    cfg, _ = trained_run
    cwd = tmp_path / "serve_command"  # every process of its Ray works here (how the leftovers are found)
    cwd.mkdir()
    log_path, port = cwd / "console.log", free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_RECALL_VERBOSE")}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "ray_recall.cli", "serve", "--run-dir", str(cfg.run_dir),
                                 "--port", str(port)], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "Ctrl-C to stop." not in log_path.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        user = _users(recaller, 1)[0]
        r = _post(f"http://127.0.0.1:{port}", {"user_id": user, "k": 3})
        assert r.status_code == 200, r.text
        assert [it["item_id"] for it in r.json()["items"]] == [it["item_id"] for it in recaller.recall(user, 3)]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0, log_path.read_text()[-3000:]
        lines = [line for line in log_path.read_text().splitlines() if line.strip()]
        assert lines[0] == f"Recall endpoint for {cfg.run_dir} at http://127.0.0.1:{port} (1 replica)", lines
        assert lines[1:] == [f"  curl -s http://127.0.0.1:{port}/healthz", lines[2], "Ctrl-C to stop.",
                             "Shutting down Serve."], lines
        assert lines[2].startswith(f"  curl -s -X POST http://127.0.0.1:{port}/recall "), lines
        deadline = time.monotonic() + 60
        while left := processes_under(str(cwd)):
            assert time.monotonic() < deadline, f"processes of the command's Ray still running: {left}"
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for pid in processes_under(str(cwd)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
