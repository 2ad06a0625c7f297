"""`scaleout bench`: what each auth mode costs per request, as a ratio to a no-auth baseline in the same run.

Each mode gets clusters with one replica behind nginx. `wrk` drives `GET /api/whoami` (no auth: the
baseline) and `GET /api/me` (with a cookie or bearer token of pre-logged-in users) in pairs; the report
gives the median of the per-pair throughput ratios, latency percentiles, errors, and server CPU per request.
"""

from __future__ import annotations

import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from scaleout.lab.bench.capacity import drive_redis, project
from scaleout.lab.bench.pairing import Pairs, Ratio, pairs
from scaleout.lab.bench.peers.serve import fastapi_users_tokens, peer, peer_logins
from scaleout.lab.bench.results import (
    BenchResults,
    BenchSettings,
    LoginCost,
    MicroCosts,
    ModeResult,
    PeerResult,
    PersistenceCost,
    WaitCost,
)
from scaleout.lab.bench.shards import measure_shards, sizing
from scaleout.lab.bench.tracking import bench_sessions, tracking_costs
from scaleout.lab.bench.wrk import Target, summarise, wrk_run
from scaleout.lab.drivers.base import ClusterError
from scaleout.lab.drivers.local import Cluster
from scaleout.lab.load import PASSWORD, make_users
from scaleout.lab.ports import isolated_settings
from scaleout.lab.processes import nginx_workers
from scaleout.lab.redisadmin import redis_command

MODES: dict[str, dict[str, object]] = {
    "session/memory": {"auth_mode": "session", "session_store": "memory"},
    "session/redis": {"auth_mode": "session", "session_store": "redis"},
    "jwt RS256": {"auth_mode": "jwt", "jwt_alg": "RS256"},
    "jwt ES256": {"auth_mode": "jwt", "jwt_alg": "ES256"},
    "jwt HS256": {"auth_mode": "jwt", "jwt_alg": "HS256"},
    "jwt RS256 + denylist": {"auth_mode": "jwt", "jwt_alg": "RS256", "jwt_revocation": "denylist"},
    "session/redis + cache": {"auth_mode": "session", "session_store": "redis", "session_cache": "tracking"},
    "jwt RS256 + denylist + cache": {
        "auth_mode": "jwt",
        "jwt_alg": "RS256",
        "jwt_revocation": "denylist",
        "session_cache": "tracking",
    },
}
QUICK_MODES = ("session/redis", "session/redis + cache", "jwt RS256")
SENTINEL_MODES = ("session/redis", "jwt RS256 + denylist")  # the modes that read Redis per request
PEERS_OF = {
    "jwt RS256": ("FastAPI tutorial (python-jose)", "fastapi-users JWTStrategy", "authx (RS256)"),
    "session/redis": ("fastapi-users RedisStrategy",),
    "session/redis + cache": ("starsessions RedisStore", "Starlette SessionMiddleware (signed cookie)"),
}


def processes(cluster: Cluster) -> dict[str, list[int]]:
    """What the bench times per request: nginx, the one replica, and every Redis primary (one, or a Redis
    Cluster's shards': a request reads one of them, so their CPU together is what it costs)."""
    s = cluster.services
    nginx = s["nginx"].pid or 0
    primaries = [shard.primary for shard in cluster.shards()] or [cluster.primary() or "redis"]
    return {
        "nginx": [nginx, *nginx_workers(nginx)],
        "api": [s["api-1"].pid or 0],
        "redis": [s[p].pid or 0 for p in primaries],
    }


def wait_cost(cluster: Cluster, n: int = 200) -> WaitCost:
    """A login's session write to the primary, without and with `WAIT 1` (in process, same Redis)."""
    import asyncio

    from scaleout.core.sessions import Session, new_handle, new_session_id
    from scaleout.core.store import Durability, Store, make_redis

    s = cluster.settings

    async def measure(durability: Durability) -> float:
        redis = Store(make_redis(s), durability)
        reads = redis.reads()
        store = bench_sessions(redis, reads)
        times = []
        for _ in range(n):
            start = time.perf_counter()
            await store.put(new_session_id(), Session("bench", "c", time.time(), "uid-bench", new_handle()))
            times.append(time.perf_counter() - start)
        await reads.aclose()
        await redis.aclose()
        return round(statistics.median(times) * 1000, 3)

    return WaitCost(asyncio.run(measure(Durability())), asyncio.run(measure(Durability(1, s.redis_wait_ms))))


def persistence_cost(cluster: Cluster, n: int = 400) -> PersistenceCost:
    """A login's session write, and Redis's CPU per write, with the append-only file off and on: the same
    Redis, switched at run time (`CONFIG SET appendonly`), then put back as the cluster had it."""
    import asyncio

    from scaleout.core.sessions import Session, new_handle, new_session_id
    from scaleout.core.store import Store, make_redis
    from scaleout.lab.load import wait_until

    s = cluster.settings
    svc = cluster.services["redis"]
    admin = (svc.host, svc.port, s.redis_admin_username, s.redis_admin_password())

    def info(section: str) -> dict[str, str]:
        reply = str(redis_command(*admin, "INFO", section) or "")
        return dict(line.split(":", 1) for line in reply.splitlines() if ":" in line)

    def cpu_s() -> float:
        found = info("cpu")
        return float(found["used_cpu_sys"]) + float(found["used_cpu_user"])

    def appendonly(value: str) -> None:
        if redis_command(*admin, "CONFIG", "SET", "appendonly", value) != "OK":
            raise ClusterError("could not switch the bench Redis's append-only file")

        def settled() -> bool:
            found = info("persistence")
            return found.get("aof_rewrite_in_progress") == "0" and found.get("aof_rewrite_scheduled") == "0"

        if not wait_until(settled, 10):
            raise ClusterError("the bench Redis's append-only file did not settle")

    async def measure() -> tuple[float, float]:
        redis = Store(make_redis(s))
        reads = redis.reads()
        store = bench_sessions(redis, reads)
        times = []
        before = cpu_s()
        for _ in range(n):
            start = time.perf_counter()
            await store.put(new_session_id(), Session("bench", "c", time.time(), "uid-bench", new_handle()))
            times.append(time.perf_counter() - start)
        used = cpu_s() - before
        await reads.aclose()
        await redis.aclose()
        return round(statistics.median(times) * 1000, 3), round(used / n * 1e6, 1)

    found: dict[str, list[tuple[float, float]]] = {"no": [], "yes": []}
    try:
        asyncio.run(measure())  # warm-up: scripts loaded, connections made, allocator settled
        for value in ("no", "yes", "no", "yes"):  # alternated, so that a drift does not favour either
            appendonly(value)
            found[value].append(asyncio.run(measure()))
    finally:
        appendonly("yes" if s.redis_persistence == "aof" else "no")

    def mean(value: str, i: int) -> float:
        return round(statistics.fmean(m[i] for m in found[value]), 3 if i == 0 else 1)

    return PersistenceCost(mean("no", 0), mean("yes", 0), mean("no", 1), mean("yes", 1))


def credentials(cluster: Cluster, users: int) -> tuple[str, tuple[str, ...]]:
    people = make_users(cluster.settings.public_url, users)
    try:
        if people[0].token:
            return "Authorization", tuple(f"Bearer {u.token}" for u in people)
        return "Cookie", tuple(f"sid={u.client.cookies['sid']}" for u in people)
    finally:
        for u in people:
            u.close()


def login_cost(cluster: Cluster, n: int) -> LoginCost:
    from scaleout.core.passwords import Passwords

    url = cluster.settings.public_url
    people = make_users(url, 1)
    name = people[0].name
    people[0].close()
    times = []
    with httpx.Client(base_url=url, timeout=10) as c:
        for _ in range(n):
            start = time.perf_counter()
            assert c.post("/api/login", json={"username": name, "password": PASSWORD}).status_code == 200
            times.append(time.perf_counter() - start)
    return LoginCost(
        round(n / sum(times), 1), round(statistics.median(times) * 1000, 2), Passwords(cluster.settings).parameters
    )


def signing_cost(workdir: Path) -> dict[str, float]:
    from scaleout.core.config import JWTAlg
    from scaleout.core.keys import KeyRing, hs256_key
    from scaleout.core.tokens import TokenIssuer, TokenKind

    issuer = TokenIssuer("i", "a", 60, 60)
    out = {}
    for alg in ("RS256", "ES256", "HS256"):
        key = (
            hs256_key(secrets.token_urlsafe(32))
            if alg == "HS256"
            else KeyRing(workdir / f"keys-{alg}", JWTAlg(alg), 60).signer
        )
        start = time.perf_counter()
        for _ in range(200):
            issuer.issue(key, TokenKind.access, "uid-alice", "alice", "f" * 22)
        out[alg] = round((time.perf_counter() - start) / 200 * 1000, 3)
    return out


def micro_costs() -> MicroCosts:
    """The session MAC's cost per operation, and a memory-store login below and at capacity."""
    import asyncio

    from scaleout.core.sessions import MemorySessions, Session, SessionMAC, new_handle, new_session_id

    def per_op(fn: Callable[[], object], n: int = 20_000) -> float:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return round((time.perf_counter() - start) / n * 1e6, 2)

    mac = SessionMAC(secrets.token_bytes(32))
    value = Session("alice", "c" * 43, time.time(), "uid", new_handle(), "agent", "127.0.0.1").to_json()
    sealed = mac.seal("sess:" + "0" * 64, value)

    async def logins(store: MemorySessions, n: int) -> float:
        sids = [new_session_id() for _ in range(n)]
        start = time.perf_counter()
        for i, sid in enumerate(sids):
            await store.put(sid, Session("u", "c", time.time(), f"uid{i}", new_handle()))
        return round((time.perf_counter() - start) / n * 1e6, 2)

    below = asyncio.run(logins(MemorySessions(60, 120, max_entries=200_000), 20_000))
    full = MemorySessions(60, 120, max_entries=20_000)
    asyncio.run(logins(full, 20_000))  # now at capacity: every further login evicts
    at = asyncio.run(logins(full, 20_000))
    return MicroCosts(
        per_op(lambda: mac.seal("sess:" + "0" * 64, value)),
        per_op(lambda: mac.open("sess:" + "0" * 64, sealed)),
        below,
        at,
    )


def measure_peers(
    mode: str, cluster: Cluster, header: str, creds: tuple[str, ...], n: int, seconds: float, workdir: Path
) -> list[PeerResult]:
    """Each peer of `mode` against our replica, both direct."""
    procs = processes(cluster)
    port = cluster.settings.api_port("api-1")
    ours = Target(f"http://127.0.0.1:{port}", "/api/me", header, creds)
    out = []
    for name in PEERS_OF.get(mode, ()):
        if name.startswith("FastAPI tutorial"):
            from jose import jwk as jose_jwk

            jwks = httpx.get(f"{cluster.settings.public_url}/auth/.well-known/jwks.json").json()
            pem = workdir / "tutorial_public.pem"
            pem.write_text(jose_jwk.construct(jwks["keys"][0], "RS256").to_pem().decode())
            module, env = "scaleout.lab.bench.peers.fastapi_tutorial", {"PEER_PUBLIC_KEY_FILE": str(pem)}
        elif name.startswith("authx"):
            module, env = "scaleout.lab.bench.peers.authx_app", {}
        elif name.startswith(("starsessions", "Starlette")):
            module, env = "scaleout.lab.bench.peers.cookie_sessions", {"PEER_KIND": "starlette"}
            if name.startswith("starsessions"):
                s = cluster.settings
                redis_url = f"redis://{s.redis_username}:{s.redis_password()}@{s.host}:{s.redis_port}/1"
                env = {"PEER_KIND": "starsessions", "PEER_REDIS_URL": redis_url}
        else:
            strategy = "redis" if "Redis" in name else "jwt"
            s = cluster.settings
            redis_url = f"redis://{s.redis_username}:{s.redis_password()}@{s.host}:{s.redis_port}/1"
            env = {
                "PEER_STRATEGY": strategy,
                "PEER_DATABASE": str(workdir / f"fu-{strategy}.db"),
                "PEER_REDIS_URL": redis_url,
            }
            module = "scaleout.lab.bench.peers.fastapi_users_app"
        with peer(module, env, workdir) as url:
            open_target = Target(url, "/unauthenticated-route")
            if module.endswith("fastapi_tutorial"):
                auth_target, open_target = Target(url, "/api/me", header, creds), Target(url, "/api/whoami")
            elif module.endswith(("cookie_sessions", "authx_app")):
                peer_header, values = peer_logins(url, min(len(creds), 8))
                auth_target = Target(url, "/authenticated-route", peer_header, values)
            else:
                tokens = fastapi_users_tokens(url, min(len(creds), 8))
                auth_target = Target(url, "/authenticated-route", "Authorization", tokens)
            wrk_run(auth_target, 0.5, procs, workdir)  # warm-up
            unauthenticated = summarise([wrk_run(open_target, seconds, procs, workdir) for _ in range(3)])
            found = pairs(auth_target, ours, n, seconds, procs, workdir)
        peer_side, our_side = summarise(found.a), summarise(found.b)
        out.append(
            PeerResult(
                name, mode, peer_side.rps, unauthenticated.rps, our_side.rps, Ratio.of(found.ratios), peer_side.errors
            )
        )
    return out


def run(
    quick: bool, say: Callable[[str], None] = print, only: list[str] | None = None, topology: str = "single"
) -> BenchResults:
    # Many short pairs on several fresh clusters per mode, rather than a few long runs on one: on a shared
    # machine the CPU cost of the very same request drifts within seconds, and one replica process can run
    # slower than the next for its whole life. So the two runs of a pair are close in time, and the pairs of
    # a mode come from 3 processes.
    seconds, n_pairs, clusters, users = (1.0, 1, 1, 8) if quick else (1.0, 7, 3, 32)
    sentinel = topology == "sentinel"
    sharded = topology == "cluster"
    single = not sentinel and not sharded
    default = QUICK_MODES if quick and single else tuple(MODES) if single else SENTINEL_MODES
    shard_costs = []
    modes = tuple(only) if only else default
    results = BenchResults(BenchSettings(seconds, n_pairs * clusters, clusters, users), topology=topology)
    control = Pairs()
    with tempfile.TemporaryDirectory(prefix="scaleout-bench-") as tmp:
        workdir = Path(tmp)
        for mode in modes:
            pooled = Pairs()
            for k in range(clusters):
                say(f"bench {mode} ({k + 1}/{clusters})")
                slug = mode.replace(" ", "_").replace("/", "-")
                settings = isolated_settings(
                    workdir / f"{slug}-{k}",
                    replicas=1,
                    throttle_ip_max=1_000_000,
                    fault_proxy=False,  # the product's request path, not the lab's proxy hop
                    redis_topology=topology,
                    **MODES[mode],
                )
                cluster = Cluster(settings)
                cluster.up()
                try:
                    header, creds = credentials(cluster, users)
                    base = Target(cluster.settings.public_url, "/api/whoami")
                    me = Target(cluster.settings.public_url, "/api/me", header, creds)
                    procs = processes(cluster)
                    wrk_run(base, 0.5, procs, workdir)  # warm-up
                    wrk_run(me, 0.5, procs, workdir)
                    if not quick and mode == modes[0]:
                        # The same endpoint against itself: how far from 1.0 a ratio strays by noise alone.
                        control += pairs(base, base, n_pairs, seconds, procs, workdir)
                        results.control_mode = mode
                    pooled += pairs(base, me, n_pairs, seconds, procs, workdir)
                    if k == 0 and mode == "session/redis":
                        if sentinel:
                            say("bench: the cost of WAIT on a login's session write")
                            results.wait_cost = wait_cost(cluster, 50 if quick else 400)
                        elif sharded:
                            say("bench: each shard's memory and CPU per session, login and read; all driven at once")
                            shard_costs = measure_shards(cluster, 2_000 if quick else 10_000, 1.0 if quick else 3.0)
                        else:
                            say("bench: a session write with and without the append-only file")
                            results.persistence = persistence_cost(cluster, 100 if quick else 400)
                            say("bench: Redis driven with the replicas' read pattern alone")
                            primary = cluster.services[cluster.primary() or "redis"]
                            results.redis_drive = drive_redis(
                                cluster.settings, primary.host, primary.port, primary.pid or 0, 1.0 if quick else 3.0
                            )
                    if k == 0 and mode == "session/redis + cache" and single:
                        say("bench: what tracking costs Redis (memory, invalidations, CPU per write)")
                        primary = cluster.services[cluster.primary() or "redis"]
                        results.tracking = tracking_costs(
                            cluster.settings, primary.host, primary.port, keys=2_000 if quick else 20_000
                        )
                    if k == 0 and single:
                        if mode == "jwt RS256" and results.login is None:
                            results.login = login_cost(cluster, 5 if quick else 20)
                        say(f"bench {mode}: peers")
                        results.peers += measure_peers(
                            mode, cluster, header, creds, n_pairs * 2 if not quick else 1, seconds, workdir
                        )
                finally:
                    cluster.down()
            baseline, authenticated = summarise(pooled.a), summarise(pooled.b)
            check = round(authenticated.cpu_us_per_request["api"] - baseline.cpu_us_per_request["api"], 1)
            results.modes.append(ModeResult(mode, baseline, authenticated, Ratio.of(pooled.ratios), check))
        if control.ratios:
            results.control = Ratio.of(control.ratios)
        results.capacity = project(results.modes)
        reading = next((c for c in results.capacity if c.mode == "session/redis"), None)
        if shard_costs and reading is not None:
            results.cluster = sizing(shard_costs, reading.redis_us, reading.replica_rps)
        results.signing_ms = signing_cost(workdir)
        results.micro = micro_costs()
    return results
