"""A Ray the project starts itself listens on 127.0.0.1 only: the session's in-process Ray, as `make demo`, the CLI
and the tests start it (`ray_recall.runtime.loopback_only`). The Serve endpoint's processes are checked in
tests/test_serve.py, a private `ray start` head's in tests/test_job_submit.py."""

from __future__ import annotations

import ipaddress

import pytest

from tests.sockets import listeners, with_descendants


@pytest.fixture(scope="module")
def actor(ray_session):
    """A live actor, so that at least one worker process (and its gRPC server) is there to be looked at."""
    import ray

    @ray.remote(num_cpus=0)
    class Probe:
        def pid(self) -> int:
            import os

            return os.getpid()

    a = Probe.remote()
    yield a, ray.get(a.pid.remote(), timeout=120)
    ray.kill(a)


def test_session_ray_listens_on_loopback_only(ray_session, actor):
    import os

    import ray

    _, actor_pid = actor
    node = ray._private.worker._global_node
    assert node.node_ip_address == "127.0.0.1"
    assert ipaddress.ip_address(ray.get_runtime_context().gcs_address.rsplit(":", 1)[0]).is_loopback
    # The driver (this process), the GCS and the raylet it started, and everything those started: the
    # dashboard and runtime-env agents, every worker.
    started = [p.process.pid for infos in node.all_processes.values() for p in infos]
    found = listeners(with_descendants([os.getpid(), *started]))
    names = " | ".join(sorted({f.process for f in found}))
    for expected in ("gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"):
        assert expected in names, f"no listening socket of {expected} among: {names}"
    assert any(f.pid == actor_pid for f in found), f"the actor's worker (pid {actor_pid}) listens on nothing: {names}"
    exposed = [str(f) for f in found if not f.loopback]
    assert not exposed, "listening beyond loopback:\n" + "\n".join(exposed)


def test_loopback_only_restores_cluster_mode(ray_session):
    """The switch is scoped to the start of a local Ray: afterwards this process resolves addresses as before."""
    import os

    from ray._private import ray_constants

    from ray_recall.runtime import LOCAL_ONLY_ENV, loopback_only

    before = (os.environ.get(LOCAL_ONLY_ENV), ray_constants.ENABLE_RAY_CLUSTER)
    with loopback_only():
        assert os.environ[LOCAL_ONLY_ENV] == "0" and ray_constants.ENABLE_RAY_CLUSTER is False
    assert (os.environ.get(LOCAL_ONLY_ENV), ray_constants.ENABLE_RAY_CLUSTER) == before
