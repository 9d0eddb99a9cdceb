"""A replica process killed under load: Serve replaces it and no request fails (some are retried once).

Real parts throughout: two replicas of the real app, HTTP clients, a SIGKILL to the replica's
worker process (found in Ray's actor table), Serve's own health checking and replacement.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter

import pytest
import requests

from tests.serve_http import free_port, wait_ready

APP = "rr_failover"
DEPLOYMENT = "RecallDeployment"
K = 5
CLIENTS = 4  # concurrent request loops, so that requests are in flight on the replica when it dies


def _replica_pids() -> dict[str, int]:
    """{replica id: worker process id} of this app's live replicas, from this cluster's GCS actor table.

    Not `ray.util.state.list_actors(detail=True)`: that API is served by the dashboard, which the test
    session runs without; it then asks whatever listens on the dashboard port the GCS recorded
    (127.0.0.1:8265), which on a shared machine is another Ray instance. The GCS table is the one the
    state API serves.
    """
    from ray._private.state import actors

    prefix = f"SERVE_REPLICA::{APP}#{DEPLOYMENT}#"
    alive = actors(actor_state_name="ALIVE").values()
    return {a["Name"][len(prefix):]: a["Pid"] for a in alive if a["Name"].startswith(prefix)}


def _is_replica_process(pid: int) -> bool:
    """The process is this app's replica (Ray titles a replica's worker "ray::ServeReplica:<app>:<deployment>")."""
    if not os.path.isdir("/proc"):
        return True  # not Linux: the actor table alone
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f"ServeReplica:{APP}:{DEPLOYMENT}".encode() in f.read()
    except FileNotFoundError:
        return False


def _running_replicas() -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is None or DEPLOYMENT not in app.deployments:
        return 0
    return app.deployments[DEPLOYMENT].replica_states.get("RUNNING", 0)


@pytest.fixture
def two_replicas(ray_session, trained_run):
    """Base URL of the app with 2 replicas on a free port; Serve shut down afterwards."""
    from ray import serve

    from ray_recall.serve.app import build_app

    cfg, _ = trained_run
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(cfg.run_dir, replicas=2), name=APP, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, timeout=120)
        yield url
    finally:
        serve.delete(APP)
        serve.shutdown()


def _queries(run_dir: str) -> list[dict]:
    """User queries and history queries, alternating."""
    from ray_recall.serve.recaller import Recaller

    rec = Recaller(run_dir)
    users = [u.item() if hasattr(u, "item") else u for u in rec.user_raw[:8]]
    items = [i.item() if hasattr(i, "item") else i for i in rec.item_raw]
    out = []
    for n, user in enumerate(users):
        out.append({"user_id": user, "k": K})
        out.append({"history": items[n * 7:n * 7 + 10], "k": K})
    return out


def _ask(session: requests.Session, url: str, body: dict) -> tuple[str, str]:
    """The client's retry policy: one retry on a connection error, a timeout or a 5xx (a recall is read-only,
    so repeating it is safe); a 4xx or a bad answer is not retried. -> ("ok" | "retried" | "failed", why)."""
    why = ""
    for attempt in (1, 2):
        try:
            r = session.post(f"{url}/recall", json=body, timeout=30)
        except requests.RequestException as e:
            why = repr(e)
            continue
        if r.status_code >= 500:
            why = f"{r.status_code}: {r.text[:300]}"
            continue
        if r.status_code != 200 or len(r.json()["items"]) != K:
            return "failed", f"{r.status_code}: {r.text[:300]}"
        return ("ok" if attempt == 1 else "retried"), why
    return "failed", why


def test_killing_a_replica_under_load_fails_no_request(two_replicas, trained_run):
    """Two replicas, CLIENTS request loops over real HTTP; one replica's worker process gets SIGKILL mid-loop.
    The loops keep going until Serve reports 2 RUNNING replicas again and the new replica has answered.

    Client policy (what a caller of this endpoint should do): retry a request once on a connection
    error, a timeout or a 5xx. Requests that needed the retry are counted apart ("retried"); the test
    requires 0 "failed" (an error on both tries, any 4xx, or a wrong answer). Retried requests are the
    ones in flight on the killed replica or routed to it before Serve noticed its death; they are
    reported, and bounded loosely so that a router that kept using a dead replica would fail the test.
    """
    url = two_replicas
    queries = _queries(trained_run[0].run_dir)
    before = _replica_pids()
    assert len(before) == 2 and _running_replicas() == 2, before

    outcomes: list[tuple[float, str, str]] = []  # (time, outcome, why)
    stop = threading.Event()

    def loop(offset: int):
        with requests.Session() as session:
            i = offset
            while not stop.is_set():
                outcome, why = _ask(session, url, queries[i % len(queries)])
                outcomes.append((time.monotonic(), outcome, why))
                i += 1

    threads = [threading.Thread(target=loop, args=(n,), daemon=True) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while len(outcomes) < 40:  # steady load on both replicas before the kill
            assert time.monotonic() < deadline, f"only {len(outcomes)} requests answered in 30 s"
            time.sleep(0.1)
        victim_id, victim_pid = sorted(before.items())[0]
        (survivor_id,) = set(before) - {victim_id}
        assert _is_replica_process(victim_pid), f"pid {victim_pid} is not replica {victim_id}'s process"
        killed_at = time.monotonic()
        os.kill(victim_pid, signal.SIGKILL)

        # Replaced: 2 RUNNING replicas again, one of them new; then wait until the new one answers.
        deadline = killed_at + 120
        while True:
            now = _replica_pids()
            if victim_id not in now and len(now) == 2 and _running_replicas() == 2:
                break
            assert time.monotonic() < deadline, f"not replaced within 120 s: replicas {sorted(now)}, {_running_replicas()} RUNNING"
            time.sleep(0.25)
        (new_id,) = set(now) - {survivor_id}
        replaced_at = time.monotonic()
        seen = set()
        while new_id not in seen:
            seen.add(requests.get(f"{url}/healthz", timeout=30).json()["replica"])
            assert time.monotonic() < deadline, f"replica {new_id} never answered; answered by {seen}"
        answering_at = time.monotonic()
        time.sleep(0.5)  # a little steady traffic over the two replicas again
    finally:
        stop.set()
        for t in threads:
            t.join(60)

    counts = Counter(o for _, o, _ in outcomes)
    during = sum(1 for t, _, _ in outcomes if killed_at <= t <= replaced_at)
    print(f"\n{len(outcomes)} requests: {counts['failed']} failed, {counts['retried']} retried, {counts['ok']} ok "
          f"first time; {during} answered between the kill and the replacement "
          f"({replaced_at - killed_at:.1f} s; new replica answering after {answering_at - killed_at:.1f} s)")
    for _, o, why in outcomes:
        if o != "ok":
            print(f"  {o}: first try {why[:200]}")
    assert counts["failed"] == 0, [w for _, o, w in outcomes if o == "failed"][:3]
    assert during > 0, "no request was answered while one replica was down"
    assert any(t > answering_at for t, _, _ in outcomes), "no request after the replacement"
    # In flight on the dead replica (at most its max_ongoing_requests) plus a few routed before the
    # router dropped it; far more would mean Serve kept sending traffic to a dead replica.
    assert counts["retried"] <= 4 * CLIENTS + 32, counts
