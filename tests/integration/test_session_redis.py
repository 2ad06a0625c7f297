"""session / redis (session clustering): every replica sees every session; Redis down means 503."""

from __future__ import annotations

import httpx
import pytest
from helpers import client, new_user, spread

from scaleout.lab.drivers.local import Cluster

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(start_cluster) -> Cluster:
    return start_cluster(auth_mode="session", session_store="redis", lb_mode="round_robin")


def test_every_replica_knows_the_session(cluster: Cluster) -> None:
    with client(cluster) as c:
        new_user(c)
        counts = spread([c.get("/api/me") for _ in range(30)])
    assert counts == {("api-1", 200): 10, ("api-2", 200): 10, ("api-3", 200): 10}


@pytest.mark.parametrize("lb_mode", ["sticky", "ip_hash", "round_robin"])
def test_every_request_succeeds_in_every_balancer_mode(cluster: Cluster, lb_mode: str) -> None:
    cluster.lb(lb_mode)  # type: ignore[arg-type]
    with client(cluster) as c:
        new_user(c)
        statuses = {c.get("/api/me").status_code for _ in range(15)}
    assert statuses == {200}


def test_redis_down_gives_503_and_recovers_without_restarts(cluster: Cluster) -> None:
    with client(cluster) as c:
        new_user(c)
        pids_before = {name: svc.pid for name, svc in cluster.services.items() if name != "redis"}
        cluster.stop("redis")
        try:
            down = [c.get("/api/me") for _ in range(9)]
            assert {r.status_code for r in down} == {503}
            assert {r.headers["x-replica"] for r in down} == {"api-1", "api-2", "api-3"}
            assert all(r.json() == {"detail": "session store unavailable"} for r in down)
            # Not ready (traffic should wait), yet alive (nothing to restart): the probes tell them apart.
            for name in ("api-1", "auth"):
                base = f"http://{cluster.services[name].address}"
                ready = httpx.get(f"{base}/readyz")
                assert ready.status_code == 503 and ready.headers["retry-after"] == "1", name
                assert httpx.get(f"{base}/healthz").status_code == 200, name
        finally:
            cluster.start("redis")
        for name in ("api-1", "auth"):
            assert httpx.get(f"http://{cluster.services[name].address}/readyz").json()["status"] == "ready"
        # REDIS_PERSISTENCE=aof (the default): the session survived the restart in the append-only file...
        assert {c.get("/api/me").status_code for _ in range(3)} == {200}
        # ...and a new login works on every replica with nothing else restarted.
        new_user(c)
        assert spread([c.get("/api/me") for _ in range(9)]) == {
            ("api-1", 200): 3,
            ("api-2", 200): 3,
            ("api-3", 200): 3,
        }
    assert {name: svc.pid for name, svc in cluster.services.items() if name != "redis"} == pids_before


def test_logout_kills_the_session_on_every_replica(cluster: Cluster) -> None:
    with client(cluster) as c:
        new_user(c)
        sid = c.cookies["sid"]
        csrf = c.cookies["csrf_token"]
        r = c.post("/api/logout", headers={"X-CSRF-Token": csrf})
        assert r.status_code == 204
        assert 'sid=""' in r.headers.get("set-cookie", "") or "sid=;" in r.headers.get("set-cookie", "")
    with client(cluster) as replay:
        replay.cookies.set("sid", sid)
        counts = spread([replay.get("/api/me") for _ in range(9)])
    assert counts == {("api-1", 401): 3, ("api-2", 401): 3, ("api-3", 401): 3}


def test_cookie_logout_without_matching_csrf_token_is_403_and_changes_nothing(cluster: Cluster) -> None:
    with client(cluster) as c:
        new_user(c)
        assert c.post("/api/logout").status_code == 403
        assert c.post("/api/logout", headers={"X-CSRF-Token": "x" * 43}).status_code == 403
        assert c.post("/api/logout", headers={"X-CSRF-Token": b"\xe9\xff"}).status_code == 403
        assert {c.get("/api/me").status_code for _ in range(3)} == {200}


def test_health_and_metrics_on_every_service_directly(cluster: Cluster) -> None:
    with client(cluster) as c:
        new_user(c)
        c.get("/api/me")
        c.get("/api/me", headers={"Cookie": "sid=garbage"})
        assert c.get("/metrics").status_code == 404  # not published through nginx
        assert c.get("/healthz").json()["lb_mode"] == "round_robin"
    for name, service in cluster.services.items():
        if name == "nginx" or service.health in ("redis", "tcp"):  # nginx, Redis and the fault proxies
            continue
        assert httpx.get(f"http://{service.address}/healthz").status_code == 200
        metrics = httpx.get(f"http://{service.address}/metrics")
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = "\n".join(
        httpx.get(f"http://{cluster.services[n].address}/metrics").text for n in ("api-1", "api-2", "api-3")
    )
    assert 'scaleout_requests_total{path="/api/me",service="api-' in text
    assert 'status="401"' in text and 'status="200"' in text
    assert 'scaleout_auth_failures_total{reason="malformed"}' in text
    assert 'scaleout_session_store_seconds_count{op="read",store="redis"}' in text
