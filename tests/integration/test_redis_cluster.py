"""REDIS_TOPOLOGY=cluster: six real redis-server nodes in cluster mode, three shards of a primary and a replica.

Sessions and refresh families spread over the shards; every multi-key step stays in one slot; a live reshard
under authenticated reads answers only 200; a shard's primary killed under load costs only that shard's users
a short 503; the mode table holds in session/redis and jwt with the denylist.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest
from helpers import (
    PASSWORD,
    bearer,
    client,
    logs_in_after_failover,
    new_user,
    new_username,
    per_shard,
    run_cli,
    shard_loss,
    shard_of,
    spread,
)

from scaleout.lab.bench.shards import measure_shards, sizing
from scaleout.lab.drivers.local import Cluster
from scaleout.lab.load import RequestLoop, wait_until
from scaleout.lab.processes import require_program
from scaleout.lab.redisadmin import redis_command

pytestmark = pytest.mark.cluster
# Many users register from one address here: the registration limit is not under study.
MODES = {"redis_topology": "cluster", "register_rate_per_minute": 100_000, "register_burst": 10_000}


@pytest.fixture(scope="module")
def cluster(start_cluster: Callable[..., Cluster]) -> Cluster:
    return start_cluster(**MODES, auth_mode="session", session_store="redis")


def admin(cluster: Cluster, node: str, *command: str) -> object:
    svc = cluster.services[node]
    s = cluster.settings
    return redis_command(svc.host, svc.port, s.redis_admin_username, s.redis_admin_password(), *command)


def users(cluster: Cluster, n: int) -> list[httpx.Client]:
    out = []
    for _ in range(n):
        c = client(cluster)
        new_user(c)
        out.append(c)
    return out


def keys_per_primary(cluster: Cluster, pattern: str) -> dict[str, int]:
    found = {}
    for shard in cluster.shards():
        reply = admin(cluster, shard.primary, "SCAN", "0", "MATCH", pattern, "COUNT", "100000")
        assert isinstance(reply, list)
        found[shard.primary] = len(reply[1])
    return found


def test_three_shards_each_a_primary_and_a_replica_that_refuse_strangers(cluster: Cluster) -> None:
    shards = cluster.shards()
    assert [s.number for s in shards] == [1, 2, 3]
    assert sum(b - a + 1 for s in shards for a, b in s.slots) == 16384
    nodes = [s.primary for s in shards] + [r for s in shards for r in s.replicas]
    assert sorted(nodes) == [f"redis-{n}" for n in range(1, 7)]  # six nodes, each in one role
    assert all(len(s.replicas) == 1 for s in shards)
    s = cluster.settings
    svc = cluster.services["redis-1"]
    assert redis_command(svc.host, svc.port, "default", None, "PING") is None  # no anonymous client
    # The services' user reads the slot map, not the cluster's node table, and changes nothing.
    assert isinstance(redis_command(svc.host, svc.port, s.redis_username, s.redis_password(), "CLUSTER", "SLOTS"), list)
    for refused in (("CLUSTER", "NODES"), ("CLUSTER", "FAILOVER"), ("CONFIG", "GET", "*"), ("KEYS", "*")):
        assert redis_command(svc.host, svc.port, s.redis_username, s.redis_password(), *refused) is None, refused
    status = run_cli("status", env={"CLUSTER_DIR": str(cluster.dir)})
    assert status.returncode == 0, status.stderr
    for shard in shards:
        assert shard.describe() in status.stdout  # "redis-shard-1: slots 0-5460, primary redis-1, replica ..."
    assert "redis-shard-1: slots 0-5460, primary redis-" in status.stdout
    # The fault proxy sits in front of one Redis only: the cluster's nodes announce their own addresses.
    refused = run_cli("fault", "redis", "latency", "10ms", env={"CLUSTER_DIR": str(cluster.dir)})
    assert refused.returncode == 1 and "REDIS_TOPOLOGY=cluster" in refused.stderr


def test_sessions_spread_over_every_shard_and_every_endpoint_works(cluster: Cluster) -> None:
    people = users(cluster, 24)
    shards = cluster.shards()
    by_shard = Counter(shard_of(shards, c.cookies["sid"]).number for c in people)
    assert set(by_shard) == {1, 2, 3}, by_shard
    assert all(n > 0 for n in keys_per_primary(cluster, "sess:*").values())
    for c in people[:6]:
        assert spread([c.get("/api/me") for _ in range(6)]) == {("api-1", 200): 2, ("api-2", 200): 2, ("api-3", 200): 2}
    c = people[0]
    csrf = {"X-CSRF-Token": c.cookies["csrf_token"]}
    name = c.get("/api/me").json()["username"]
    second = client(cluster)
    assert second.post("/api/login", json={"username": name, "password": PASSWORD}).status_code == 200
    listed = c.get("/api/sessions").json()["sessions"]
    assert len(listed) == 2 and sum(x["current"] for x in listed) == 1
    other = next(x["id"] for x in listed if not x["current"])
    assert c.delete(f"/api/sessions/{other}", headers=csrf).status_code == 204
    assert {second.get("/api/me").status_code for _ in range(3)} == {401}
    assert c.delete(f"/api/sessions/{other}", headers=csrf).status_code == 404
    assert second.post("/api/login", json={"username": name, "password": PASSWORD}).status_code == 200
    assert c.post("/api/logout-all", json={"keep_current": True}, headers=csrf).status_code == 204
    assert {second.get("/api/me").status_code for _ in range(3)} == {401}
    assert {c.get("/api/me").status_code for _ in range(3)} == {200}
    assert c.post("/api/logout", headers=csrf).status_code == 204
    assert c.get("/api/me").status_code == 401
    # The login throttle counts across replicas on the cluster too.
    statuses = [
        second.post("/api/login", json={"username": name, "password": "wrong-password"}).status_code for _ in range(12)
    ]
    assert 429 in statuses and set(statuses) <= {401, 429}, statuses
    d = people[1]
    assert (
        d.request(
            "DELETE", "/api/me", json={"password": PASSWORD}, headers={"X-CSRF-Token": d.cookies["csrf_token"]}
        ).status_code
        == 204
    )
    assert d.get("/api/me").status_code == 401
    for x in [*people, second]:
        x.close()


def test_the_bench_measures_every_shard_and_sizes_the_cluster(cluster: Cluster) -> None:
    """`make bench --topology cluster`'s shard measurement on this cluster, small: every shard holds some of
    the sessions, and each cost the bench reports was measured (not zero), then fed to the sizing rule. Before
    the reshard below: the shards still hold a third of the slots each."""
    shards = measure_shards(cluster, 900, 0.5)
    assert [s.shard for s in shards] == [1, 2, 3] and sum(s.sessions for s in shards) == 900
    for s in shards:
        assert s.sessions > 200 and s.kib_per_10k_sessions > 1_000 and s.login_cpu_us > 0 and s.read_cpu_us > 0, s
        assert s.drive_ops_per_s > 1_000 and 0 < s.drive_cpu_share <= 1.5, s
    sized = sizing(shards, read_us=2.0, replica_rps=20_000.0)
    assert all(p.shards >= 1 for p in sized.projections)


def reshard(cluster: Cluster, source: str, target: str, slots: int) -> None:
    """`redis-cli --cluster reshard`, as an operator runs it: keys migrate while the services keep serving."""
    ids = {n: str(admin(cluster, n, "CLUSTER", "MYID")) for n in (source, target)}
    s = cluster.settings
    entry = cluster.services[source].address
    argv = [require_program("redis-cli"), "--user", s.redis_admin_username, "--no-auth-warning", "--cluster"]
    argv += ["reshard", entry, "--cluster-from", ids[source], "--cluster-to", ids[target]]
    argv += ["--cluster-slots", str(slots), "--cluster-yes", "--cluster-pipeline", "10"]
    env = {**os.environ, "REDISCLI_AUTH": s.redis_admin_password() or ""}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_a_live_reshard_under_authenticated_reads_answers_only_200(cluster: Cluster) -> None:
    people = users(cluster, 30)
    shards = cluster.shards()
    before = {id(c): shard_of(shards, c.cookies["sid"]).primary for c in people}
    source = cluster.shards()[0].primary
    target = cluster.shards()[1].primary
    loopers = [client(cluster) for _ in range(4)]

    def me(worker: int, n: int) -> int:
        c = people[n % len(people)]
        try:
            return loopers[worker].get("/api/me", headers={"Cookie": f"sid={c.cookies['sid']}"}).status_code
        except httpx.HTTPError:
            return 599

    with RequestLoop(me) as loop:
        assert wait_until(lambda: len(loop.outcomes) >= 100, 10)
        started = time.monotonic()
        reshard(cluster, source, target, 3000)
        moved_in = time.monotonic() - started
        after = len(loop.outcomes)
        assert wait_until(lambda: len(loop.outcomes) >= after + 100, 10)
    shards = cluster.shards()
    moved = [c for c in people if before[id(c)] == source and shard_of(shards, c.cookies["sid"]).primary == target]
    during = loop.between(started, started + moved_in)
    print(f"reshard: 3000 slots in {moved_in:.2f} s, {len(during)} GETs meanwhile, {len(moved)} users' sessions moved")
    assert moved, "no session was on the slots moved"
    assert len(during) > 50
    assert Counter(loop.values()) == {200: len(loop.outcomes)}
    for c in people:  # every session is where it was moved to, and still valid everywhere
        assert {c.get("/api/me").status_code for _ in range(3)} == {200}
    for c in [*people, *loopers]:
        c.close()


def test_a_shards_primary_killed_under_load_costs_only_its_users_a_short_503(cluster: Cluster) -> None:
    people = users(cluster, 30)
    shards = cluster.shards()
    shard = {id(c): shard_of(shards, c.cookies["sid"]).number for c in people}
    assert set(shard.values()) == {1, 2, 3}
    gone = client(cluster)
    new_user(gone)
    gone_sid = gone.cookies["sid"]
    assert gone.post("/api/logout", headers={"X-CSRF-Token": gone.cookies["csrf_token"]}).status_code == 204
    victim = next(s for s in cluster.shards() if s.number == 2)
    loopers = [client(cluster) for _ in range(4)]

    with RequestLoop(per_shard(people, loopers, shard)) as loop:
        assert wait_until(lambda: len(loop.outcomes) >= 100, 10)
        killed_at = time.monotonic()
        cluster.stop(victim.primary, kill=True)
        assert wait_until(lambda: any(s.number == 2 and s.primary != victim.primary for s in cluster.shards()), 15)
        assert wait_until(lambda: [v for _, v in loop.values()[-40:]] == [200] * 40, 15)
    others, failed = shard_loss(loop, killed_at, 2)
    assert others == {200: sum(others.values())} and others[200] > 50, others  # other shards: 200 throughout
    # The outage as the shard's users saw it: from the first 503 to the last (the verb's own lookup of the
    # shard's primary, before the kill, is not part of it).
    window = (max(failed) - min(failed)) if failed else 0.0
    print(f"shard 2's primary killed: {len(failed)} of its users' GETs 503 for {window:.2f} s, others all 200")
    assert failed and window < 5.0, window
    for c in people:  # nothing acknowledged before the kill is lost (each login waited for its replica)
        assert {c.get("/api/me").status_code for _ in range(3)} == {200}
    with httpx.Client(base_url=cluster.settings.public_url) as thief:
        assert thief.get("/api/me", headers={"Cookie": f"sid={gone_sid}"}).status_code == 401  # the logout holds too
    # Until the node is back its shard has no replica: a login there cannot be confirmed (`WAIT`), so it is
    # refused with 503, never acknowledged without a copy; the other shards' logins go on.
    on_two = next(c for c in people if shard[id(c)] == 2)
    name = on_two.get("/api/me").json()["username"]
    with client(cluster) as again:
        refused = again.post("/api/login", json={"username": name, "password": PASSWORD})
        assert refused.status_code == 503 and "retry-after" in refused.headers, refused.text
        # The killed node comes back as the replica of its shard's new primary, and logins there work again.
        cluster.start(victim.primary)
        assert wait_until(lambda: victim.primary in next(s for s in cluster.shards() if s.number == 2).replicas, 15)
        logs_in_after_failover(again, name)
    for c in [*people, *loopers, gone]:
        c.close()


def test_the_whole_store_down_gives_503_and_coming_back_heals_without_restarts(cluster: Cluster) -> None:
    c = client(cluster)
    new_user(c)
    nodes = [f"redis-{n}" for n in range(1, 7)]
    for node in nodes:
        cluster.stop(node)
    r = c.get("/api/me")
    assert r.status_code == 503 and "retry-after" in r.headers
    assert {c.get("/api/me").status_code for _ in range(6)} == {503}  # never let in, never a 500
    for node in nodes:
        cluster.start(node)
    cluster.wait_topology()
    assert wait_until(lambda: c.get("/api/me").status_code == 200, 10)
    assert {c.get("/api/me").status_code for _ in range(6)} == {200}  # the session was kept (append-only file)
    c.close()


@pytest.mark.parametrize("mode", ["sticky", "ip_hash"])
def test_every_balancing_mode_serves_every_request(cluster: Cluster, mode: str) -> None:
    cluster.lb(mode)  # type: ignore[arg-type]
    try:
        with client(cluster) as c:
            new_user(c)
            assert {status for _, status in spread([c.get("/api/me") for _ in range(9)])} == {200}
    finally:
        cluster.lb("round_robin")  # type: ignore[arg-type]


def test_jwt_with_the_denylist_on_the_cluster(start_cluster: Callable[..., Cluster]) -> None:
    jwt = start_cluster(**MODES, auth_mode="jwt", jwt_revocation="denylist")
    tokens = []
    with client(jwt) as c:
        for _ in range(36):  # (2/3)^36 x 3: the chance that one shard gets no family at all
            name = new_username("j")
            assert c.post("/api/register", json={"username": name, "password": PASSWORD}).status_code == 201
            r = c.post("/api/login", json={"username": name, "password": PASSWORD})
            assert r.status_code == 200
            tokens.append(r.json())
        access, refresh = tokens[0]["access_token"], tokens[0]["refresh_token"]
        assert spread([c.get("/api/me", headers=bearer(access)) for _ in range(6)]) == {
            ("api-1", 200): 2,
            ("api-2", 200): 2,
            ("api-3", 200): 2,
        }
        assert all(n > 0 for n in keys_per_primary(jwt, "user:*:fams").values())  # families on every shard
        fresh = c.post("/api/refresh", json={"refresh_token": refresh})
        assert fresh.status_code == 200
        assert c.post("/api/refresh", json={"refresh_token": refresh}).status_code == 401  # reused: family revoked
        assert c.post("/api/refresh", json={"refresh_token": fresh.json()["refresh_token"]}).status_code == 401
        second = tokens[1]
        assert len(c.get("/api/sessions", headers=bearer(second["access_token"])).json()["sessions"]) == 1
        assert c.post("/api/logout", headers=bearer(second["access_token"])).status_code == 204
        assert {c.get("/api/me", headers=bearer(second["access_token"])).status_code for _ in range(6)} == {401}
        assert c.post("/api/refresh", json={"refresh_token": second["refresh_token"]}).status_code == 401
        assert {c.get("/api/me", headers=bearer(tokens[2]["access_token"])).status_code for _ in range(3)} == {200}


def near_cache_hits(cluster: Cluster) -> float:
    total = 0.0
    for name in cluster.settings.replica_names:
        for line in httpx.get(f"http://{cluster.services[name].address}/metrics").text.splitlines():
            if line.startswith("scaleout_near_cache_hits_total"):
                total += float(line.split()[1])
    return total


def test_the_near_cache_hears_every_shards_invalidations(start_cluster: Callable[..., Cluster]) -> None:
    """SESSION_CACHE=tracking on the cluster: each replica's read connection to each shard keeps its own cache,
    so reads are served from memory and a logout of a session on any shard is refused at once everywhere."""
    cached = start_cluster(**MODES, auth_mode="session", session_store="redis", session_cache="tracking")
    people = users(cached, 30)  # (2/3)^30 x 3: the chance that one shard gets no session at all
    shards = cached.shards()
    assert {shard_of(shards, c.cookies["sid"]).number for c in people} == {1, 2, 3}
    for c in people:
        for _ in range(9):  # every replica renews, then reads into the cache of that shard's connection
            assert c.get("/api/me").status_code == 200
    before = near_cache_hits(cached)
    for c in people:
        assert {status for _, status in spread([c.get("/api/me") for _ in range(3)])} == {200}
    assert near_cache_hits(cached) - before == 3 * len(people)  # every one from memory
    for c in people:
        sid = c.cookies["sid"]
        assert c.post("/api/logout", headers={"X-CSRF-Token": c.cookies["csrf_token"]}).status_code == 204
        with httpx.Client(base_url=cached.settings.public_url, headers={"Cookie": f"sid={sid}"}) as replay:
            assert {status for _, status in spread([replay.get("/api/me") for _ in range(6)])} == {401}
        c.close()
