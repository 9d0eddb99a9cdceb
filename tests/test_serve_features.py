"""The endpoint's features over real HTTP against real Serve apps.

History queries (the user tower runs in the replica), user queries, `exclude`, bad input (4xx,
never 500), request batching, a multi-interest model, strict unknown items, and hot reload of the
run through the deployment's user_config without a failed request.

Two apps share one Serve instance, deployed the way `serve deploy` does it (a declarative config
applied by the controller), so that the reload test exercises an in-place user_config update:

    /      the trained DSSM run; batches wait up to 50 ms so that concurrent requests share one.
           The reload test switches it to another run (a DSSM without history input, an HNSW
           index) and back.
    /mi    a ComiRec (multi-interest) run derived from it; unknown history items are an error;
           max_history 50
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from tests.serve_http import free_port, wait_ready

from ray_recall import batch as B

K = 7
IMPORT_PATH = "ray_recall.serve.app:app_builder"
TOKEN = "test-token-" + os.urandom(8).hex()


# ------------------------------------------------------------------------------- runs


def _derive_run(src: str, dst: str, name: str, params: dict, dim: int = 32, factory: str = "Flat") -> str:
    """A copy of `src` with a fresh (untrained, seeded) `name` model, its item and user embeddings
    (computed as the embed job does) and a `factory` index: a complete run for another model, in seconds."""
    import pyarrow.parquet as pq
    import torch

    from ray_recall.stages.embed import _vectors_table
    from ray_recall.index import VectorIndex
    from ray_recall.models import build_model, interests_of
    from ray_recall.batch import user_batch
    from ray_recall.rundir import ModelFile, RunDir, tensor_bytes

    shutil.copytree(src, dst)
    run = RunDir(dst)
    schema = run.read_schema()
    torch.manual_seed(0)
    model = build_model(name, schema, dim, params).eval()
    run.write_bytes(tensor_bytes(ModelFile(name, dim, params, model.state_dict()).to_dict()), "model", "model.pt")
    users, _ = run.read_embeddings("users")
    items = np.arange(1, schema.num_items + 1)
    seqs = run.read_sequences(schema.num_users)
    with torch.no_grad():
        item_vecs = model.encode_item({B.ITEM: torch.from_numpy(items)}).numpy()
        user_vecs = model.encode_user(user_batch(seqs, users, seqs.length(users), schema.max_len)).numpy()
    shutil.rmtree(f"{dst}/embeddings")
    for side, key, ids, vecs in (("items", "item_idx", items, item_vecs), ("users", "user_idx", users, user_vecs)):
        os.makedirs(f"{dst}/embeddings/{side}")
        pq.write_table(_vectors_table(key, ids, vecs), f"{dst}/embeddings/{side}/part-0.parquet")
    run.write_json({"dim": dim, "interests": interests_of(model), "num_items": schema.num_items,
                    "num_users": int(len(users)), "seconds": 0.0}, "embeddings", "meta.json")
    metric = run.read_json("index", "meta.json")["metric"]
    VectorIndex(factory, metric).fit(item_vecs, items).save(run)
    for stage in ("train", "embed", "index"):  # a new run: its checksums are those of the files written here
        run.record_files(stage)
    return dst


@pytest.fixture(scope="module")
def runs(trained_run, tmp_path_factory):
    """{"main", "mi", "reload_b"}: absolute run directories."""
    main = str(trained_run[0].run_dir)
    base = tmp_path_factory.mktemp("serve_features")
    return {
        "main": main,
        "mi": _derive_run(main, str(base / "comirec"), "comirec", {"num_interests": 3}),
        "reload_b": _derive_run(main, str(base / "nohist_hnsw"), "dssm",
                                {"feature_dim": 16, "hidden_units": [64], "use_history": False}, factory="HNSW16"),
    }


# ------------------------------------------------------------------------------- the Serve apps


def _app(name: str, route: str, run_dir: str, **args) -> dict:
    return {"name": name, "route_prefix": route, "import_path": IMPORT_PATH, "args": {"run_dir": run_dir, **args}}


def _deploy(config: dict) -> None:
    """What `serve deploy config.yaml` does, minus the dashboard: the controller applies the config."""
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))


@pytest.fixture(scope="module")
def serve_config(runs):
    """(base URL, the deployed config): two apps on a free port, Serve shut down afterwards."""
    from ray import serve

    port = free_port()
    config = {
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            _app("rr_main", "/", runs["main"], batch_wait_timeout_s=0.05),
            _app("rr_mi", "/mi", runs["mi"], unknown_items="error", max_history=50),
            # The token reaches the replica through its environment, as a Secret's env entry would.
            {**_app("rr_auth", "/auth", runs["main"], auth="token"),
             "runtime_env": {"env_vars": {"RAY_RECALL_TOKEN": TOKEN}}},
        ],
    }
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        _deploy(config)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, ("", "/mi", "/auth"))
        yield url, config
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def url(serve_config):
    return serve_config[0]


def _post(url, body, route=""):
    return requests.post(f"{url}{route}/recall", json=body, timeout=60)


# ------------------------------------------------------------------------------- offline reference


@functools.lru_cache(maxsize=None)
def _offline(run_dir: str):
    """(model, index, item vocab, user vocab, stored user vectors by dense id, max_len), loaded in-process."""
    from ray_recall.index import VectorIndex
    from ray_recall.models import load_trained
    from ray_recall.rundir import RunDir

    run = RunDir(run_dir)
    model, schema = load_trained(run)
    ids, vecs = run.read_embeddings("users")
    return (model, VectorIndex.load(run), run.read_items()["raw_id"].to_numpy(), run.read_user_vocab().ids,
            dict(zip(ids.tolist(), vecs)), schema.max_len)


def _dense(vocab, raw) -> np.ndarray:
    from ray_recall.vocab import lookup

    return lookup(np.asarray(vocab), np.asarray(list(raw))) if len(raw) else np.zeros(0, np.int64)


def _rank(run_dir, vec, k, drop) -> list[tuple]:
    """Full ranking of the run's index for vec ([D] or [K, D]), minus `drop` (dense ids) -> [(original id, score)] top k."""
    _, index, items, *_ = _offline(run_dir)
    ids, scores = index.query(vec, len(index))
    drop = set(drop)
    out = [(i, s) for i, s in zip(ids.tolist(), scores.tolist()) if i > 0 and i not in drop][:k]
    return [(items[i - 1].item(), s) for i, s in out]


def offline_history(run_dir, history, k=K, exclude_seen=True, exclude=()) -> list[tuple]:
    """Encode the history with the run's model in-process, query the run's index."""
    import torch

    model, _, items, _, _, max_len = _offline(run_dir)
    known = _dense(items, history)
    known = known[known > 0]
    hist = np.zeros((1, max_len), np.int64)
    tail = known[-max_len:]
    hist[0, :len(tail)] = tail
    with torch.no_grad():
        vec = model.encode_user({B.USER: torch.zeros(1, dtype=torch.int64), B.HIST: torch.from_numpy(hist),
                                 B.HIST_LEN: torch.tensor([len(tail)])})[0].numpy()
    drop = set(known.tolist()) if exclude_seen else set()
    return _rank(run_dir, vec, k, drop | set(_dense(items, exclude).tolist()))


def offline_user(run_dir, user, k=K, exclude_seen=True, exclude=()) -> list[tuple]:
    """The user's stored vector (embedding job), the run's index, the user's known items dropped."""
    from ray_recall.rundir import RunDir

    _, _, items, users, vecs, _ = _offline(run_dir)
    d = int(_dense(users, [user])[0])
    run = RunDir(run_dir)
    seen = run.read_sequences(run.read_meta()["num_users"]).sequence(d).tolist() if exclude_seen else []
    return _rank(run_dir, vecs[d], k, set(seen) | set(_dense(items, exclude).tolist()))


def _ids(run_dir):
    """(a few original user ids, every original item id) of a run, as plain Python values."""
    _, _, items, users, vecs, _ = _offline(run_dir)
    with_vec = [users[d - 1] for d in sorted(vecs)]
    picks = [with_vec[i] for i in (0, len(with_vec) // 3, 2 * len(with_vec) // 3, len(with_vec) - 1)]
    return [u.item() if hasattr(u, "item") else u for u in picks], [i.item() if hasattr(i, "item") else i for i in items]


def _histories(run_dir, n, length=8, seed=0) -> list[list]:
    rng = np.random.default_rng(seed)
    _, items = _ids(run_dir)
    return [rng.choice(items, length, replace=False).tolist() for _ in range(n)]


def _assert_same(got: list[dict], want: list[tuple]):
    assert [g["item_id"] for g in got] == [w[0] for w in want]
    for g, w in zip(got, want):
        assert g["score"] == pytest.approx(w[1], abs=1e-4)


# ------------------------------------------------------------------------------- tests


def test_history_query_matches_offline(url, runs):
    run = runs["main"]
    longer_than_max_len = _histories(run, 1, length=30, seed=7)  # the model reads the last 20
    for history in _histories(run, 3) + longer_than_max_len:
        r = _post(url, {"history": history, "k": K})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["user_id"] is None and body["unknown_items"] == []
        _assert_same(body["items"], offline_history(run, history))
        assert not set(history) & {it["item_id"] for it in body["items"]}
    history = _histories(run, 1, seed=1)[0]
    r = _post(url, {"history": history, "k": K, "exclude_seen": False})
    assert r.status_code == 200, r.text
    _assert_same(r.json()["items"], offline_history(run, history, exclude_seen=False))


def test_unknown_history_items_are_ignored_and_reported(url, runs):
    run = runs["main"]
    history = _histories(run, 1, seed=2)[0]
    sent = ["no-such-item", history[0], -5, *history[1:], "no-such-item"]
    r = _post(url, {"history": sent, "k": K})
    assert r.status_code == 200, r.text
    assert r.json()["unknown_items"] == ["no-such-item", -5]
    _assert_same(r.json()["items"], offline_history(run, history))


def test_user_query_matches_offline(url, runs):
    run = runs["main"]
    users, _ = _ids(run)
    for user in users:
        r = _post(url, {"user_id": user, "k": K})
        assert r.status_code == 200, r.text
        assert r.json()["user_id"] == user
        _assert_same(r.json()["items"], offline_user(run, user))
    r = _post(url, {"user_id": users[0], "k": K, "exclude_seen": False})
    _assert_same(r.json()["items"], offline_user(run, users[0], exclude_seen=False))


def test_exclude_removes_items(url, runs):
    run = runs["main"]
    user = _ids(run)[0][1]
    history = _histories(run, 1, seed=3)[0]
    for query, offline in (({"user_id": user}, functools.partial(offline_user, run, user)),
                           ({"history": history}, functools.partial(offline_history, run, history))):
        before = [it["item_id"] for it in _post(url, {**query, "k": 10}).json()["items"]]
        exclude = [before[0], before[3], before[6], "no-such-item"]
        r = _post(url, {**query, "k": 10, "exclude": exclude})
        assert r.status_code == 200, r.text
        after = [it["item_id"] for it in r.json()["items"]]
        assert len(after) == 10 and not set(exclude) & set(after)
        assert [i for i in before if i not in exclude] == after[:7]  # the rest keep their order, others move up
        _assert_same(r.json()["items"], offline(k=10, exclude=exclude))


def test_multi_interest_model_concurrent_queries_match_offline(url, runs):
    """ComiRec ([B, K, D] users): every interest searched and merged, stored and encoded users in the same batches."""
    run = runs["mi"]
    users, _ = _ids(run)
    queries = [({"user_id": u, "k": K}, functools.partial(offline_user, run, u)) for u in users]
    queries += [({"history": h, "k": K}, functools.partial(offline_history, run, h)) for h in _histories(run, 4, seed=4)]
    with ThreadPoolExecutor(len(queries)) as pool:
        responses = list(pool.map(lambda q: _post(url, q[0], "/mi"), queries))
    for (body, offline), r in zip(queries, responses):
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        assert len({it["item_id"] for it in items}) == K  # merged without duplicates
        _assert_same(items, offline())
    health = requests.get(f"{url}/mi/healthz", timeout=30).json()
    assert health["model"] == "comirec" and health["interests"] == 3


def test_concurrent_requests_are_batched(url, runs):
    """16 simultaneous history queries: some share one model pass and search, and every answer is still its own."""
    run = runs["main"]
    histories = _histories(run, 16, seed=5)
    sizes = []
    for _ in range(3):  # a loaded machine may spread one round's arrivals beyond the 50 ms window
        start = threading.Barrier(len(histories))

        def ask(history):
            start.wait()
            return _post(url, {"history": history, "k": K})

        with ThreadPoolExecutor(len(histories)) as pool:
            responses = list(pool.map(ask, histories))
        for history, r in zip(histories, responses):
            assert r.status_code == 200, r.text
            _assert_same(r.json()["items"], offline_history(run, history))
        sizes = [r.json()["batch_size"] for r in responses]
        if max(sizes) > 1:
            break
    assert max(sizes) > 1, f"no request was batched with another: batch sizes {sizes}"
    assert max(sizes) <= 16  # max_batch_size


def _bad_cases():
    """(id, route, body (or raw bytes) given (users, items), status, text the answer must contain)."""
    def h(n=3):
        return lambda users, items: {"history": items[:n]}

    return [
        ("history-empty", "", lambda u, i: {"history": []}, 422, "history is empty"),
        ("history-too-long", "", lambda u, i: {"history": (i * 6)[:1001]}, 422, "at most 1000"),
        ("history-too-long-configured", "/mi", lambda u, i: {"history": i[:51]}, 422, "at most 50"),
        ("history-all-unknown", "", lambda u, i: {"history": ["no-such-item", -5]}, 422, "none of the history"),
        ("history-unknown-strict", "/mi", lambda u, i: {"history": [i[0], "no-such-item", -5]}, 422, "'no-such-item', -5"),
        ("history-null", "", lambda u, i: {"history": None}, 422, '"history"'),
        ("history-not-list", "", lambda u, i: {"history": i[0]}, 422, '"history"'),
        ("history-bool", "", lambda u, i: {"history": [i[0], True]}, 422, '"history"'),
        ("history-float", "", lambda u, i: {"history": [1.5]}, 422, '"history"'),
        ("history-nested", "", lambda u, i: {"history": [[i[0]]]}, 422, '"history"'),
        ("user-and-history", "", lambda u, i: {"user_id": u[0], "history": i[:3]}, 422, "exactly one"),
        ("neither", "", lambda u, i: {"k": 5}, 422, "exactly one"),
        ("k0-history", "", lambda u, i: {**h()(u, i), "k": 0}, 422, '"k"'),
        ("k1001-history", "", lambda u, i: {**h()(u, i), "k": 1001}, 422, '"k"'),
        ("k-str-history", "", lambda u, i: {**h()(u, i), "k": "5"}, 422, '"k"'),
        ("exclude-not-list", "", lambda u, i: {"user_id": u[0], "exclude": i[0]}, 422, '"exclude"'),
        ("exclude-nested", "", lambda u, i: {"user_id": u[0], "exclude": [[i[0]]]}, 422, '"exclude"'),
        ("exclude-too-long", "", lambda u, i: {"user_id": u[0], "exclude": list(range(10_001))}, 422, '"exclude"'),
        ("exclude-seen-str", "", lambda u, i: {**h()(u, i), "exclude_seen": "yes"}, 422, '"exclude_seen"'),
        ("extra-key", "", lambda u, i: {**h()(u, i), "topk": 5}, 422, '"topk"'),
        ("unknown-user", "", lambda u, i: {"user_id": "no-such-user"}, 404, "'no-such-user'"),
        ("unknown-user-mi", "/mi", lambda u, i: {"user_id": 987654321}, 404, "987654321"),
        ("malformed-json", "", lambda u, i: b'{"history": [1, 2', 422, "json_invalid"),
        ("body-is-list", "", lambda u, i: [i[0]], 422, '"body"'),
        # Hostile requests: each a 4xx saying what is wrong, never a 500, and never a silent wrong answer.
        ("k-nan", "", lambda u, i: b'{"user_id": 1, "k": NaN}', 422, '"k"'),
        ("user-infinity", "", lambda u, i: b'{"user_id": Infinity, "k": 3}', 422, "not float"),
        ("history-nan", "", lambda u, i: b'{"history": [NaN], "k": 3}', 422, "not float"),
        ("history-huge-int", "", lambda u, i: {"history": [2**63, *i[:2]], "k": 3}, 422, "[-2**63, 2**63 - 1]"),
        ("exclude-huge-int", "", lambda u, i: {"user_id": u[0], "exclude": [*i[:2], 2**64]}, 422, "[-2**63, 2**63 - 1]"),
        ("user-long-string", "", lambda u, i: {"user_id": "x" * 1_000_000, "k": 3}, 422, "at most 256 characters"),
        ("history-long-string", "", lambda u, i: {"history": [i[0], "y" * 300_000]}, 422, "at most 256 characters"),
        ("bad-utf8", "", lambda u, i: b'{"user_id": "\xff\xfe", "k": 3}', 422, "json_invalid"),
        ("deep-nesting", "", lambda u, i: b'{"history": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", 422, "recursion limit"),
        ("body-too-large", "", lambda u, i: {"user_id": u[0], "exclude": ["z" * 200] * 6000}, 413, "at most 1048576"),
    ]


@pytest.mark.parametrize("route,make,status,text", [c[1:] for c in _bad_cases()], ids=[c[0] for c in _bad_cases()])
def test_bad_input_is_4xx_with_a_message(url, runs, route, make, status, text):
    users, items = _ids(runs["main"])
    body = make(users, items)
    if isinstance(body, bytes):
        r = requests.post(f"{url}{route}/recall", data=body, headers={"content-type": "application/json"}, timeout=60)
    else:
        r = _post(url, body, route)
    assert r.status_code == status, r.text[:2000]
    detail = r.json()["detail"]
    assert detail
    if isinstance(detail, list):  # FastAPI's validation shape, for the endpoint's own 422s too
        assert all(d["msg"] and d["loc"] for d in detail)
    assert text in json.dumps(detail), detail
    assert len(r.content) < 4000, f"the reply echoes the request: {len(r.content)} bytes"


def test_a_huge_integer_does_not_hide_the_other_items(url, runs):
    """Before, one id >= 2**63 made numpy compare the whole history as strings: now the ids are checked one by one,
    and the same history without it is answered (as the history of its known items)."""
    users, items = _ids(runs["main"])
    ok = _post(url, {"history": items[:2], "k": 3})
    assert ok.status_code == 200 and len(ok.json()["items"]) == 3, ok.text
    r = _post(url, {"history": [str(items[0]), items[1]], "k": 3})  # "50" names item 50, as before
    assert r.status_code == 200 and r.json()["items"] == ok.json()["items"], r.text


def test_bearer_token_when_auth_is_on(url, runs):
    """auth=token: /recall needs the bearer token (a 401 naming the header otherwise), /healthz stays open;
    the apps without it (auth=off, the default) take requests without any header."""
    users, _ = _ids(runs["main"])
    body = {"user_id": users[0], "k": K}
    assert requests.get(f"{url}/auth/healthz", timeout=30).json()["auth"] == "token"
    for headers in ({}, {"authorization": "Bearer wrong-token-0123456789"}, {"authorization": TOKEN},
                    {"authorization": f"Basic {TOKEN}"}):
        r = requests.post(f"{url}/auth/recall", json=body, headers=headers, timeout=30)
        assert r.status_code == 401 and "Authorization: Bearer" in r.json()["detail"], (headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
    r = requests.post(f"{url}/auth/recall", json=body, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["items"] == _post(url, body).json()["items"]  # the same run without auth, no header
    assert TOKEN not in requests.get(f"{url}/auth/healthz", timeout=30).text


def test_auth_without_a_token_fails_at_start_naming_the_variable(monkeypatch):
    from ray_recall.serve.app import ServeSettings

    monkeypatch.delenv("RAY_RECALL_TOKEN", raising=False)
    with pytest.raises(ValueError, match="RAY_RECALL_TOKEN"):
        ServeSettings(auth="token").read_token()
    assert ServeSettings().read_token() is None  # off by default


def test_wrong_content_type_is_415(url):
    r = requests.post(f"{url}/recall", data=b'{"user_id": 1}', headers={"content-type": "text/plain"}, timeout=30)
    assert r.status_code == 415 and "application/json" in r.json()["detail"], r.text
    r = requests.post(f"{url}/recall", data=b"user_id=1", timeout=30)  # no content type at all
    assert r.status_code == 415, r.text


def _replica_peak_rss(app: str) -> int:
    """Peak RSS (bytes, VmHWM) of the app's one replica process on this machine."""
    from ray._private.state import actors

    (pid,) = [a["Pid"] for a in actors().values()
              if a["ActorClassName"] == f"ServeReplica:{app}:RecallDeployment" and a["State"] == "ALIVE"]
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def test_fuzzed_requests_get_an_answer_or_a_4xx(url, runs):
    """Hypothesis draws bodies around the request schema (every field, wrong types, NaN, huge and negative
    integers, long and odd strings, nested lists, extra keys, raw bytes): never a 5xx, a 200 always matches the
    response model, a 4xx always says why, and the replica's peak memory stays where it was."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    from ray_recall.serve.app import RecallResponse

    users, items = _ids(runs["main"])
    ids = st.one_of(st.sampled_from(users + items), st.integers(min_value=-(2**70), max_value=2**70),
                    st.text(max_size=300), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
                    st.lists(st.integers(), max_size=2))
    body = st.fixed_dictionaries({}, optional={
        "user_id": ids, "history": st.one_of(st.lists(ids, max_size=60), ids),
        "k": st.one_of(st.integers(min_value=-5, max_value=2000), st.floats(allow_nan=True), st.text(max_size=5)),
        "exclude_seen": st.one_of(st.booleans(), st.integers(), st.none()),
        "exclude": st.one_of(st.lists(ids, max_size=60), ids), "topk": st.integers()})
    raw = st.one_of(body.map(lambda b: json.dumps(b).encode()), st.binary(max_size=300))
    before = _replica_peak_rss("rr_main")
    seen = {}

    @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(raw)
    def check(payload: bytes):
        r = requests.post(f"{url}/recall", data=payload, headers={"content-type": "application/json"}, timeout=60)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code in (200, 404, 422), (r.status_code, payload[:200], r.text[:500])
        if r.status_code == 200:
            RecallResponse.model_validate(r.json())
        else:
            assert r.json()["detail"], r.text

    check()
    assert seen.get(200, 0) + seen.get(404, 0) > 0 and seen.get(422, 0) > 0, seen  # both kinds were reached
    assert _replica_peak_rss("rr_main") - before < 200 * 2**20, "the fuzzed requests raised the replica's peak memory"


def _switch(url, config, run_dir, done, what, timeout=90) -> dict:
    """Deploy `config` with the main app's user_config pointing at `run_dir` (None: back to the build args'
    run), then wait until its healthz satisfies `done`; -> that healthz."""
    apps = [dict(a) for a in config["applications"]]
    if run_dir is not None:
        apps[0]["deployments"] = [{"name": "RecallDeployment", "user_config": {"run_dir": run_dir}}]
    _deploy({**config, "applications": apps})
    deadline = time.monotonic() + timeout
    while not done(health := requests.get(f"{url}/healthz", timeout=30).json()):
        assert time.monotonic() < deadline, f"{what} within {timeout} s: {health}"
        time.sleep(0.2)
    return health


def test_hot_reload_under_load_fails_no_request(serve_config, runs):
    """Point the app at another run (a user_config change, applied in place) while a client keeps asking.

    The new run has another model (a DSSM that does not read histories) and another index (HNSW):
    afterwards healthz names it, user answers come from its vectors and index, history queries are
    the 422 of a model that cannot encode a history. Then a run that cannot be loaded: the replica
    keeps serving. Finally the app goes back to its original run for the other tests.
    """
    url, config = serve_config
    before = requests.get(f"{url}/healthz", timeout=30).json()
    assert before["run"] == runs["main"] and before["index"] == "Flat" and before["history_queries"]
    users, items = _ids(runs["main"])
    stop, failures, statuses = threading.Event(), [], []

    def client():
        i = 0
        while not stop.is_set():
            i += 1
            try:
                r = _post(url, {"user_id": users[i % len(users)], "k": K})
                statuses.append(r.status_code)
                if r.status_code != 200 or len(r.json()["items"]) != K:
                    failures.append(r.text)
            except requests.RequestException as e:
                failures.append(repr(e))

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)
        served_before = len(statuses)
        after = _switch(url, config, runs["reload_b"], lambda h: h["run"] == runs["reload_b"], "no switch to the new run")
        served_at_swap = len(statuses)
        time.sleep(1.0)  # keep asking the new run for a while
        stop.set()
        thread.join(60)
        assert failures == [], failures[:3]
        assert 0 < served_before < served_at_swap < len(statuses), "the client did not keep asking during the reload"
        assert after["index"] == "HNSW16" and after["model"] == "dssm" and not after["history_queries"]
        assert after["items"] == before["items"] and after["reload_error"] is None
        assert after["replica"] == before["replica"], "the replica was replaced instead of reconfigured in place"
        for user in users:
            r = _post(url, {"user_id": user, "k": K})
            _assert_same(r.json()["items"], offline_user(runs["reload_b"], user))
        r = _post(url, {"history": items[:3]})
        assert r.status_code == 422 and "use_history=False" in r.json()["detail"][0]["msg"], r.text

        # A run that cannot be loaded is never swapped in: the replica keeps serving the current one.
        missing = runs["reload_b"] + "-missing"
        health = _switch(url, config, missing, lambda h: h["reload_error"], "the failed reload was not reported")
        assert missing in health["reload_error"] and health["run"] == runs["reload_b"], health
        assert health["replica"] == before["replica"]
        r = _post(url, {"user_id": users[0], "k": K})
        assert r.status_code == 200, r.text
        _assert_same(r.json()["items"], offline_user(runs["reload_b"], users[0]))
    finally:
        stop.set()
        _switch(url, config, None, lambda h: h["run"] == runs["main"], "no switch back to the original run")
