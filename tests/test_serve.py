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
