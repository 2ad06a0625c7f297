"""`make fault` on a real cluster: the fault proxies between the services and Redis, and between the
replicas and the auth service. A slow, silent or resetting dependency gets every request a bounded answer:
200 when the dependency answered in time, else 503 with `Retry-After`; never let in, never a hang; and
200 again within a second of the fault clearing, with no restart."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import httpx
import pytest
from helpers import PASSWORD, bearer, client, new_user, new_username, run_cli

from scaleout.lab.drivers.local import Cluster
from scaleout.lab.load import wait_until

pytestmark = pytest.mark.cluster

STORE_BUDGET = 0.5  # REDIS_TIMEOUT: a store read's budget
INFLIGHT = 4  # requests nginx lets each replica work on at once (small here, so that a test can fill it)
SLACK = 0.5  # what a request may take beyond its budget (nginx, the event loop, this machine)


@pytest.fixture(scope="module")
def cluster(start_cluster: Callable[..., Cluster]) -> Cluster:
    return start_cluster(
        auth_mode="session",
        session_store="redis",
        redis_timeout=STORE_BUDGET,
        argon2_queue_wait=1.0,
        auth_timeout=2.0,
        replica_max_inflight=INFLIGHT,
    )


def fault(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("fault", *args, env={"CLUSTER_DIR": str(cluster.dir)})


def timed(c: httpx.Client, n: int, path: str = "/api/me") -> list[tuple[int, float, str | None]]:
    out = []
    for _ in range(n):
        started = time.monotonic()
        r = c.get(path)
        out.append((r.status_code, time.monotonic() - started, r.headers.get("retry-after")))
    return out


def recovery(c: httpx.Client) -> float:
    """Seconds from now until every replica answers 200 again (three in a row, round robin)."""
    started = time.monotonic()
    assert wait_until(lambda: [r.status_code for r in (c.get("/api/me") for _ in range(3))] == [200] * 3, 10, 0.02)
    return time.monotonic() - started


def test_wrong_faults_are_one_line_and_exit_2(cluster: Cluster) -> None:
    for args, named in [
        (("redis", "latency"), "needs a VALUE"),
        (("redis", "latency", "soon"), "VALUE='soon'"),
        (("redis", "latency", "90s"), "at most 60s"),
        (("redis", "earthquake"), "KIND='earthquake'"),
        (("nginx", "latency", "5ms"), "TARGET='nginx'"),
        (("redis", "blackhole", "5ms"), "takes no VALUE"),
    ]:
        run = fault(cluster, *args)
        assert run.returncode == 2 and named in run.stderr, (args, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_latency_within_the_budget_is_paid_and_beyond_it_is_a_fast_503(cluster: Cluster) -> None:
    with client(cluster) as c:
        new_user(c)
        try:
            assert fault(cluster, "redis", "latency", "60ms").returncode == 0
            slow = timed(c, 9)
            assert {s for s, _, _ in slow} == {200}
            assert min(t for _, t, _ in slow) >= 0.06  # each request waited on a store read
            assert "latency 60ms" in run_cli("status", env={"CLUSTER_DIR": str(cluster.dir)}).stdout
            assert fault(cluster, "redis", "latency", "3s").returncode == 0
            late = timed(c, 9)
            assert {(s, ra) for s, _, ra in late} == {(503, "1")}  # never 200 unchecked, never a 500
            assert max(t for _, t, _ in late) < STORE_BUDGET + SLACK, late
        finally:
            assert fault(cluster, "redis", "clear").returncode == 0
        took = recovery(c)
        print(f"slow store: 200 again {took:.2f} s after the fault cleared")
        assert took < 1.0


@pytest.mark.parametrize("kind", ["blackhole", "reset"])
def test_a_silent_or_resetting_store_is_a_bounded_503_and_heals_within_a_second(cluster: Cluster, kind: str) -> None:
    with client(cluster) as c:
        user, _ = new_user(c)
        csrf = c.cookies["csrf_token"]
        try:
            assert fault(cluster, "redis", kind).returncode == 0
            answers = timed(c, 9)
            assert {(s, ra) for s, _, ra in answers} == {(503, "1")}, answers
            assert max(t for _, t, _ in answers) < STORE_BUDGET + SLACK, answers
            started = time.monotonic()
            out = c.post("/api/logout", headers={"X-CSRF-Token": csrf})
            assert out.status_code == 503  # a logout that could not be confirmed is never reported as done
            assert time.monotonic() - started < STORE_BUDGET * 2 + SLACK
            name = new_username("silent")
            started = time.monotonic()
            r = c.post("/api/register", json={"username": name, "password": PASSWORD})
            assert r.status_code in (201, 503)
            assert time.monotonic() - started < 2.0 + SLACK
        finally:
            assert fault(cluster, "redis", "clear").returncode == 0
        took = recovery(c)
        print(f"{kind} store: 200 again {took:.2f} s after the fault cleared")
        assert took < 1.0
        assert c.post("/api/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
        # Through the auth service too, whose pooled connections to Redis the fault broke: a fresh one, no 500.
        assert c.post("/api/login", json={"username": user, "password": PASSWORD}).status_code == 200


def test_a_silent_auth_service_makes_logins_a_bounded_503(cluster: Cluster) -> None:
    s = cluster.settings
    with client(cluster) as c:
        name, _ = new_user(c)
        try:
            assert fault(cluster, "auth", "blackhole").returncode == 0
            started = time.monotonic()
            r = c.post("/api/login", json={"username": name, "password": PASSWORD})
            took = time.monotonic() - started
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert s.auth_timeout <= took < s.auth_timeout + SLACK, took
            assert {x.status_code for x in (c.get("/api/me") for _ in range(3))} == {200}  # sessions live in Redis
        finally:
            assert fault(cluster, "auth", "clear").returncode == 0
        assert wait_until(
            lambda: c.post("/api/login", json={"username": name, "password": PASSWORD}).status_code == 200, 5
        )


def test_beyond_what_the_replicas_may_work_on_the_excess_is_shed_at_once(cluster: Cluster) -> None:
    """A slow store keeps every admitted request 300 ms; 40 at once against 3 replicas x 4: the excess gets
    503 with Retry-After from nginx at once (no queue), the admitted ones 200, nothing else."""
    import asyncio

    with client(cluster) as c:
        new_user(c)
        cookies = dict(c.cookies)

    async def one(http: httpx.AsyncClient) -> tuple[int, float, str | None]:
        started = time.monotonic()
        r = await http.get("/api/me")
        return r.status_code, time.monotonic() - started, r.headers.get("retry-after")

    async def flood() -> list[tuple[int, float, str | None]]:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=cluster.public_url, cookies=cookies, limits=limits, timeout=5) as http:
            return list(await asyncio.gather(*(one(http) for _ in range(40))))

    try:
        assert fault(cluster, "redis", "latency", "300ms").returncode == 0
        answers = asyncio.run(flood())
    finally:
        assert fault(cluster, "redis", "clear").returncode == 0
    admitted = [t for s, t, _ in answers if s == 200]
    shed = [(t, ra) for s, t, ra in answers if s == 503]
    assert len(admitted) + len(shed) == 40, answers  # nothing but 200 and 503
    assert 1 <= len(admitted) <= 3 * INFLIGHT, answers
    assert all(0.3 <= t < STORE_BUDGET + SLACK for t in admitted), admitted
    assert shed and all(ra == "1" and t < 0.25 for t, ra in shed), shed  # at once: never queued behind the slow
    assert recovery(httpx.Client(base_url=cluster.public_url, cookies=cookies)) < 1.0


def test_jwt_logout_and_refresh_through_a_silent_auth_service_are_503_never_done(
    start_cluster: Callable[..., Cluster],
) -> None:
    """A logout the auth service could not confirm is reported as such (503), never as done (204); the
    access token still works where nothing was revoked, and everything is done once the fault clears."""
    jwt = start_cluster(auth_mode="jwt", jwt_revocation="denylist", auth_timeout=1.0)
    with client(jwt) as c:
        _, r = new_user(c)
        access, refresh = r.json()["access_token"], r.json()["refresh_token"]
        try:
            assert fault(jwt, "auth", "blackhole").returncode == 0
            for call in (
                lambda: c.post("/api/logout", headers=bearer(access)),
                lambda: c.post("/api/refresh", json={"refresh_token": refresh}),
            ):
                started = time.monotonic()
                out = call()
                assert (out.status_code, out.headers.get("retry-after")) == (503, "1"), out.text
                assert time.monotonic() - started < 1.0 + SLACK
            assert c.get("/api/me", headers=bearer(access)).status_code == 200  # not revoked: not claimed to be
        finally:
            assert fault(jwt, "auth", "clear").returncode == 0
        assert c.post("/api/logout", headers=bearer(access)).status_code == 204
        assert c.get("/api/me", headers=bearer(access)).status_code == 401


def test_logins_beyond_what_argon2_can_take_are_shed_before_any_hashing(
    start_cluster: Callable[..., Cluster],
) -> None:
    """30 logins at once against one hashing slot with a short queue: the excess gets a fast 503 with
    Retry-After, and the auth service computed exactly one Argon2 verification per login it answered."""
    import asyncio
    import re

    busy = start_cluster(
        auth_mode="jwt",
        argon2_concurrency=1,
        argon2_queue_wait=0.2,
        replicas=1,
        throttle_ip_max=1_000_000,
        throttle_account_max=1000,  # the attempts arrive together: the account limit is not under study here
    )
    auth = f"http://{busy.services['auth'].address}/metrics"

    def counted(name: str) -> float:
        found = re.search(rf"^{name} ([0-9.e+]+)$", httpx.get(auth).text, re.M)
        assert found, name
        return float(found.group(1))

    with client(busy) as c:
        name, _ = new_user(c)
    hashed, shed = counted("scaleout_password_hashes_total"), counted("scaleout_password_hashes_shed_total")

    async def one(http: httpx.AsyncClient) -> tuple[int, float, str | None]:
        started = time.monotonic()
        r = await http.post("/api/login", json={"username": name, "password": PASSWORD})
        return r.status_code, time.monotonic() - started, r.headers.get("retry-after")

    async def flood() -> list[tuple[int, float, str | None]]:
        async with httpx.AsyncClient(base_url=busy.public_url, timeout=10) as http:
            return list(await asyncio.gather(*(one(http) for _ in range(30))))

    answers = asyncio.run(flood())
    served = sum(s == 200 for s, _, _ in answers)
    refused = [(t, ra) for s, t, ra in answers if s == 503]
    assert served + len(refused) == 30, answers  # nothing but 200 and 503
    assert served >= 1 and refused, answers
    assert all(ra == "1" and t < 0.2 + 1.0 for t, ra in refused), refused  # the queue's wait, then at once
    assert counted("scaleout_password_hashes_total") - hashed == served  # no hash for a refused login
    assert counted("scaleout_password_hashes_shed_total") - shed == len(refused)


def test_an_open_loop_overload_is_shed_fast_and_the_admitted_stay_quick(cluster: Cluster) -> None:
    """Requests at a fixed rate, whatever the answers (`scaleout.lab.openloop`), at half, twice and five times
    what the replicas can hold: a store 20 ms away and 3 replicas x INFLIGHT make the capacity known. The
    excess gets a fast 503, the admitted stay quick, nobody waits a second, and all is served once it drops."""
    import uvloop  # the generator must outpace the server

    from scaleout.lab.openloop import OpenLoopRun, offer

    def offer_sync(rate: float, seconds: float) -> OpenLoopRun:
        return uvloop.run(offer(host, port, "/api/me", rate, seconds, cookie))

    with client(cluster) as c:
        new_user(c)
        cookie = {"Cookie": f"sid={c.cookies['sid']}"}
    host, port = cluster.settings.host, cluster.settings.nginx_port
    capacity = 3 * INFLIGHT / 0.02
    try:
        assert fault(cluster, "redis", "latency", "20ms").returncode == 0
        runs = {x: offer_sync(x * capacity, 2.0) for x in (0.5, 2, 5)}
    finally:
        assert fault(cluster, "redis", "clear").returncode == 0
    for x, run in runs.items():
        statuses = run.statuses()
        print(run.describe())
        assert set(statuses) <= {"200", "503"}, (x, statuses)  # never a timeout, a reset or another 5xx
        assert run.slowest_ms() < 1000, x
        assert run.admitted_ms(0.99) < 50, x
    below = runs[0.5].statuses()
    assert below.get("200", 0) >= 0.99 * sum(below.values()), below
    for x in (2, 5):
        assert runs[x].statuses().get("503", 0) > 0 and runs[x].admitted_rate() <= 1.25 * capacity, x
    after = offer_sync(0.5 * capacity, 1.0)  # the load dropped, the fault cleared
    assert after.statuses() == {"200": len(after.shots)}
