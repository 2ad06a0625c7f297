"""Live balancer switches and a replica crash, each under a client loop: no request may fail."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import pytest
from helpers import client

from scaleout.lab.drivers.local import Cluster
from scaleout.lab.load import RequestLoop
from scaleout.lab.load import wait_until as shared_wait_until

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(start_cluster) -> Cluster:
    return start_cluster(auth_mode="session", session_store="redis", lb_mode="round_robin")


@dataclass
class Loop:
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    seen: list[tuple[float, str, str]] = field(default_factory=list)  # (time, lb mode, replica)


@contextmanager
def looping_gets(cluster: Cluster, fresh_connections: bool) -> Iterator[Loop]:
    loop = Loop()
    c = client(cluster)

    def get(worker: int, n: int) -> None:
        try:
            if fresh_connections:
                r = httpx.get(f"{cluster.settings.public_url}/api/whoami", timeout=5)
            else:
                r = c.get("/api/whoami")
            if r.status_code == 200:
                loop.ok += 1
                loop.seen.append((time.monotonic(), r.headers["x-lb-mode"], r.headers["x-replica"]))
            else:
                loop.failures.append(f"{r.status_code} {r.text[:80]}")
        except httpx.HTTPError as exc:
            loop.failures.append(repr(exc))

    try:
        with RequestLoop(get, workers=1):
            yield loop
    finally:
        c.close()


def wait_until(predicate, timeout: float = 5.0) -> None:
    assert shared_wait_until(predicate, timeout), "condition not reached in time"


def _first_seen(loop: Loop, mode: str, after: float) -> float:
    return min(t for t, m, _ in loop.seen if m == mode and t >= after)


def test_switching_modes_live_fails_no_request_and_takes_effect_within_a_second(cluster: Cluster) -> None:
    with looping_gets(cluster, fresh_connections=True) as loop:
        wait_until(lambda: loop.ok >= 5)
        switches = []
        for mode in ("sticky", "round_robin", "ip_hash", "round_robin"):
            started = time.monotonic()
            cluster.lb(mode)  # type: ignore[arg-type]
            switches.append((mode, started))
            count = loop.ok
            wait_until(lambda count=count: loop.ok >= count + 10)
    assert loop.failures == []
    assert loop.ok > 20
    for mode, started in switches:
        assert _first_seen(loop, mode, started) - started < 1.0, mode


def test_a_replica_killed_mid_loop_fails_no_get(cluster: Cluster) -> None:
    with looping_gets(cluster, fresh_connections=False) as loop:
        wait_until(lambda: loop.ok >= 5)
        cluster.stop("api-2", kill=True)
        dead_from = len(loop.seen) + 1  # skip the one request that may have been in flight
        count = loop.ok
        wait_until(lambda: loop.ok >= count + 30)
    try:
        assert loop.failures == []
        after = [replica for _, _, replica in loop.seen[dead_from:]]
        assert after and "api-2" not in after
        assert {"api-1", "api-3"} <= set(after)
    finally:
        cluster.start("api-2")
    # nginx rests a failed server for fail_timeout (2 s), then sends it traffic again.
    with client(cluster) as c:
        wait_until(lambda: c.get("/api/whoami").json()["replica"] == "api-2", timeout=10)
