"""Reaching a Serve application started by a test: a free port for its proxy, and waiting until it answers."""

from __future__ import annotations

import time

import requests

from tests.ray_head import free_ports


def free_port() -> int:
    return free_ports(1)[0]


def wait_ready(url: str, routes: tuple[str, ...] = ("",), timeout: float = 180) -> None:
    """Poll GET <url><route>/healthz until each route answers 200.

    serve.run returns once the replicas are up, but the proxy may need a moment to learn the route
    (and may hold a request until a replica is up), so connection errors and timeouts mean "not yet".
    """
    deadline = time.monotonic() + timeout
    for route in routes:
        while True:
            try:
                if requests.get(f"{url}{route}/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                from ray import serve

                raise RuntimeError(f"{url}{route} not ready after {timeout} s: {serve.status()}")
            time.sleep(0.5)
