"""REDIS_TOPOLOGY=sentinel: a primary, two replicas, three Sentinels; sessions that survive a failover.

The primary is SIGKILLed under load; what was acknowledged before (logins, a logout) must hold after, on
every replica; during the failover only 200 or 503 is ever seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from helpers import PASSWORD, client, logs_in_after_failover, new_user, new_username, spread

from scaleout.lab.drivers.local import Cluster
from scaleout.lab.load import RequestLoop, wait_until
from scaleout.lab.redisadmin import redis_command

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(start_cluster: Callable[..., Cluster]) -> Cluster:
    return start_cluster(auth_mode="session", session_store="redis", redis_topology="sentinel")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def role(cluster: Cluster, name: str) -> str | None:
    svc = cluster.services[name]
    s = cluster.settings
    reply = redis_command(svc.host, svc.port, s.redis_username, s.redis_password(), "ROLE")
    return str(reply[0]) if isinstance(reply, list) else None


def test_the_topology_is_one_primary_two_replicas_three_sentinels(cluster: Cluster) -> None:
    names = set(cluster.services)
    assert {"redis-1", "redis-2", "redis-3", "sentinel-1", "sentinel-2", "sentinel-3"} <= names
    assert cluster.primary() == "redis-1"
    assert [role(cluster, f"redis-{n}") for n in (1, 2, 3)] == ["master", "slave", "slave"]
    s = cluster.settings
    # The Sentinels, like the Redis servers, refuse clients without the password.
    host, port = s.sentinel_hosts[0]
    assert redis_command(host, port, "default", None, "SENTINEL", "masters") is None
    assert redis_command(host, port, "default", s.redis_password(), "PING") is None  # not the services' password
    assert redis_command(host, port, "default", s.redis_admin_password(), "PING") == "PONG"
    with client(cluster) as c:
        new_user(c)
        assert spread([c.get("/api/me") for _ in range(9)]) == {("api-1", 200): 3, ("api-2", 200): 3, ("api-3", 200): 3}


def test_acknowledged_sessions_and_logouts_survive_the_primary_being_killed(cluster: Cluster) -> None:
    users = []
    for _ in range(8):
        c = client(cluster)
        new_user(c)
        users.append(c)
    gone = client(cluster)
    new_user(gone)
    csrf = gone.cookies["csrf_token"]
    sid = gone.cookies["sid"]
    assert gone.post("/api/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
    old_primary = cluster.primary()
    assert old_primary is not None

    loop_clients = [client(cluster) for _ in range(4)]
    for lc, u in zip(loop_clients, users, strict=False):
        lc.cookies.set("sid", u.cookies["sid"])

    def me(worker: int, n: int) -> int:
        try:
            return loop_clients[worker].get("/api/me").status_code
        except httpx.HTTPError:
            return 599

    with RequestLoop(me) as loop:
        assert wait_until(lambda: len(loop.outcomes) >= 40, 10)
        killed_at = time.monotonic()
        cluster.stop(old_primary, kill=True)
        assert wait_until(lambda: cluster.primary() not in (None, old_primary), 30)
        elected = time.monotonic()
        # Every replica answers 200 again once clients find the new primary.
        assert wait_until(lambda: len(loop.between(elected, float("inf"))) >= 40, 15)
        assert wait_until(lambda: set(loop.values()[-20:]) == {200}, 15)
    after_kill = [o for o in loop.outcomes if o.started >= killed_at]
    last_failure = max((o.started for o in after_kill if o.value != 200), default=killed_at)
    recovered = last_failure - killed_at
    seen = set(loop.values())
    assert seen <= {200, 503}, seen  # never 401 for a good session, never 500
    assert 503 in seen  # the outage was seen (and answered 503, with Retry-After)
    new_primary = cluster.primary()
    assert new_primary not in (None, old_primary)
    assert recovered < 10, recovered
    print(f"failover: every replica answered 200 again {recovered:.2f} s after the primary was killed")
    for u in users:  # every session acknowledged before the kill, on every replica
        assert {u.get("/api/me").status_code for _ in range(6)} == {200}
    with httpx.Client(base_url=cluster.settings.public_url) as thief:
        thief.cookies.set("sid", sid)
        assert {thief.get("/api/me").status_code for _ in range(6)} == {401}  # the logout still holds
    with client(cluster) as c:
        # New logins work after the failover. Right after it a login may get 503 for a moment: until the
        # surviving replica follows the new primary, no replica can confirm the session (WAIT), and a login
        # that cannot be confirmed is refused rather than acknowledged and lost.
        name = new_username("after")
        assert c.post("/api/register", json={"username": name, "password": PASSWORD}).status_code == 201
        logs_in_after_failover(c, name)
        assert {c.get("/api/me").status_code for _ in range(6)} == {200}
    for c in [*users, *loop_clients, gone]:
        c.close()

    # The demoted primary comes back as a replica of the new one; nothing is written to it.
    cluster.start(old_primary)
    assert wait_until(lambda: role(cluster, old_primary) == "slave", 15)
    assert cluster.primary() == new_primary
    writable = cluster_redis_at(cluster, old_primary)
    import redis

    with pytest.raises(redis.exceptions.ReadOnlyError):
        writable.set("probe", "x")
    writable.close()


def cluster_redis_at(cluster: Cluster, name: str):
    import redis

    svc = cluster.services[name]
    s = cluster.settings
    return redis.Redis(host=svc.host, port=svc.port, username=s.redis_admin_username, password=s.redis_admin_password())


def test_make_stop_redis_stops_whichever_is_primary_and_start_brings_it_back_as_a_replica(cluster: Cluster) -> None:
    for name in ("redis-1", "redis-2", "redis-3"):  # whatever an earlier test left stopped
        if not cluster.services[name].pid:
            cluster.start(name)
    cluster.wait_topology()
    before = cluster.primary()
    assert before is not None
    cluster.stop("redis")
    assert not cluster.services[before].pid
    assert wait_until(lambda: cluster.primary() not in (None, before), 30)
    cluster.start("redis")
    assert wait_until(lambda: role(cluster, before) == "slave", 30)
    with client(cluster) as c:
        new_user(c)
        # Every replica serves it; one that had not yet reconnected to the new primary may answer 503 once
        # (never 401, never 500) before it does.
        seen: list[int] = []
        assert wait_until(
            lambda: seen.extend(c.get("/api/me").status_code for _ in range(6)) or seen[-6:] == [200] * 6, 10
        )
        assert set(seen) <= {200, 503}, seen


def test_every_file_that_holds_the_password_stays_owner_only_after_failovers(cluster: Cluster) -> None:
    """The Sentinels and the Redis servers rewrite their configs after a failover (CONFIG REWRITE); what
    they write holds the password, and must stay the owner's alone like every other secret."""
    s = cluster.settings
    passwords = [p.encode() for p in (s.redis_password(), s.redis_admin_password()) if p]
    assert len(passwords) == 2
    holding = [p for p in s.cluster_dir.rglob("*") if p.is_file() and any(w in p.read_bytes() for w in passwords)]
    assert {p.name for p in holding} >= {"sentinel-1.conf", "redis-1.conf", "redis_password", "redis_admin_password"}
    loose = {str(p): oct(p.stat().st_mode & 0o777) for p in holding if p.stat().st_mode & 0o077}
    assert not loose, loose


FORBIDDEN = [
    ("CONFIG", "SET", "maxmemory", "1"),
    ("REPLICAOF", "127.0.0.1", "1"),
    ("FLUSHALL",),
    ("ACL", "LIST"),
    ("KEYS", "*"),
    ("SWAPDB", "0", "1"),
    ("CLIENT", "KILL", "TYPE", "normal"),
    ("MONITOR",),
    ("SHUTDOWN",),
    ("SUBSCRIBE", "x"),
    ("INFO",),
]


def test_the_services_redis_user_may_send_only_what_the_services_send(cluster: Cluster) -> None:
    """Least privilege: the password every API replica and the auth service hold can read and write
    sessions, and cannot reconfigure, empty, stop or repoint any Redis, nor any Sentinel."""
    import redis
    from redis.exceptions import NoPermissionError

    s = cluster.settings
    primary = cluster.primary()
    assert primary
    svc = cluster.services[primary]
    app = (s.redis_username, s.redis_password())
    assert redis_command(svc.host, svc.port, *app, "SET", "acl:probe", "1") == "OK"
    as_app = redis.Redis(host=svc.host, port=svc.port, username=app[0], password=app[1], socket_timeout=2)
    for command in FORBIDDEN:
        with pytest.raises(NoPermissionError):
            as_app.execute_command(*command)
    assert redis_command(svc.host, svc.port, s.redis_admin_username, s.redis_admin_password(), "INFO", "server")
    # `default` holds every permission (Redis replays its append-only file as that user), and nobody logs in as it.
    for password in (s.redis_admin_password(), s.redis_password(), ""):
        assert redis_command(svc.host, svc.port, "default", password or "x", "PING") is None
    host, port = s.sentinel_hosts[0]
    assert redis_command(host, port, *app, "SENTINEL", "get-master-addr-by-name", s.sentinel_master) == [
        svc.host,
        str(svc.port),
    ]
    at_sentinel = redis.Redis(host=host, port=port, username=app[0], password=app[1], socket_timeout=2)
    for command in [
        ("SENTINEL", "REMOVE", s.sentinel_master),
        ("SENTINEL", "MONITOR", "evil", "127.0.0.1", "1", "1"),
        ("SENTINEL", "SET", s.sentinel_master, "down-after-milliseconds", "1"),
        ("SENTINEL", "FAILOVER", s.sentinel_master),
        ("SENTINEL", "CONFIG", "SET", "resolve-hostnames", "yes"),
        ("SHUTDOWN",),
    ]:
        with pytest.raises(NoPermissionError):
            at_sentinel.execute_command(*command)
    as_app.close()
    at_sentinel.close()
    assert cluster.primary() == primary


@pytest.mark.anyio
async def test_a_connection_to_a_server_that_is_not_the_primary_is_refused(cluster: Cluster) -> None:
    """A Sentinel can name a server that is no longer primary; both kinds of client connection ask the
    server itself (`ROLE`) and refuse it, so a read never lands where a revocation is invisible."""
    from types import SimpleNamespace

    from redis.exceptions import ConnectionError as RedisConnectionError

    from scaleout.core.pipelined import PipelinedConnection
    from scaleout.core.store import PrimaryConnection

    s = cluster.settings
    cluster.wait_topology()
    primary = cluster.primary()
    replica = next(n for n in ("redis-1", "redis-2", "redis-3") if n != primary)
    wrong = cluster.services[replica]

    async def lying_sentinel() -> tuple[str, int]:
        return wrong.host, wrong.port

    lean = PipelinedConnection(
        wrong.host, wrong.port, username=s.redis_username, password=s.redis_password(), locate=lying_sentinel
    )
    try:
        with pytest.raises(RedisConnectionError):
            await lean.call("GET", "x")
    finally:
        await lean.aclose()
    pool = SimpleNamespace(is_master=True, check_connection=False)
    conn = PrimaryConnection(connection_pool=pool, username=s.redis_username, password=s.redis_password())
    with pytest.raises(RedisConnectionError, match="not the primary"):
        await conn.connect_to((wrong.host, wrong.port))
    right = cluster.services[primary or ""]
    ok = PrimaryConnection(connection_pool=pool, username=s.redis_username, password=s.redis_password())
    await ok.connect_to((right.host, right.port))
    await ok.disconnect()
