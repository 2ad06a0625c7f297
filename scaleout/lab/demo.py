"""`scaleout demo`: the scenario matrix that shows stateful against stateless scale-out, in numbers.

Every scenario starts its own cluster (3 replicas, real nginx and Redis, free ports, a directory of its
own) in the mode it needs, drives simulated users through nginx, injects its fault, and returns plain
numbers. `report.py` turns them into the table, `reports/demo.md`, `demo.json` and the charts.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx

from scaleout.core.config import LBMode, Settings
from scaleout.core.sessions import new_csrf_token, new_session_id
from scaleout.lab.cpubound import cpu_bound_overload
from scaleout.lab.demo_results import (
    ClusteringResult,
    CookieOnlyResult,
    CPUBoundOverload,
    DemoResults,
    DeviceRevocation,
    FailoverResult,
    FaultPhase,
    GrowthPoint,
    GrowthResult,
    IpHashResult,
    JwtResult,
    LiveSwitchResult,
    Outage,
    OverloadResult,
    OverloadStep,
    RevocationMode,
    RevocationResult,
    ScenarioResult,
    SlowStoreResult,
    StickyResult,
    StickyScenario,
    Switch,
    Traffic,
    WallResult,
)
from scaleout.lab.drivers.base import ClusterDriver
from scaleout.lab.drivers.local import Cluster
from scaleout.lab.load import (
    Hit,
    RequestLoop,
    User,
    drive,
    imbalance,
    latency_ms,
    make_users,
    per_replica,
    percentile,
    status_by_replica,
    success_rate,
)
from scaleout.lab.openloop import OpenLoopRun, Pool, exchange
from scaleout.lab.ports import isolated_settings

SCENARIOS = (
    "cookie_only",
    "stateful_wall",
    "sticky",
    "clustering",
    "near_cache",
    "store_failover",
    "replication_growth",
    "jwt",
    "revocation",
    "live_switch",
    "slow_store",
    "overload",
)


@dataclass
class Context:
    users: int
    requests: int
    workdir: Path
    say: Callable[[str], None] = print
    target: str = "local"  # or "compose", "swarm": the same scenarios on a container stack

    def driver(self, settings: Settings, name: str = "scaleout-demo") -> ClusterDriver:
        """A driver for this target (nothing started yet)."""
        if self.target == "compose":
            from scaleout.lab.drivers.compose import Stack

            return Stack(settings, project=name, say=self.say)
        if self.target == "swarm":
            from scaleout.lab.drivers.swarm import Swarm

            nodes = int(os.environ.get("SWARM_NODES") or 1)
            return Swarm(settings, stack=name.replace("-", ""), say=self.say, nodes=nodes)
        return Cluster(settings)

    @contextmanager
    def cluster(self, **modes: object) -> Iterator[ClusterDriver]:
        directory = Path(tempfile.mkdtemp(prefix="cluster-", dir=self.workdir))
        # Users all come from one address here; the per-address login throttle is not under study.
        # Without the fault proxies unless a scenario asks: the demo measures the cluster, not the lab's hop.
        settings = isolated_settings(directory, **{"throttle_ip_max": 1_000_000, "fault_proxy": False, **modes})
        label = "/".join(str(v) for v in modes.values())
        self.say(f"starting a {'cluster' if self.target == 'local' else self.target + ' stack'}: {label}")
        cluster = self.driver(settings, f"scaleout-demo-{directory.name[-8:].lower()}")
        try:
            cluster.up()  # a start that fails half-way still leaves nothing behind
            yield cluster
        finally:
            cluster.down()


def _timeline(hits: list[Hit], origin: float, step: float = 0.25) -> list[tuple[float, float]]:
    """Success rate per time bin, seconds relative to `origin` (the fault)."""
    bins: dict[int, list[int]] = {}
    for h in hits:
        bins.setdefault(int((h.at - origin) // step), []).append(h.status == 200)
    return [(round(k * step, 3), round(sum(v) / len(v), 3)) for k, v in sorted(bins.items())]


def _latencies(hits: list[Hit], limit: int = 2000) -> list[float]:
    ok = [round(h.latency * 1000, 3) for h in hits if h.status == 200]
    return ok[:: max(1, len(ok) // limit)]


TT = TypeVar("TT", bound=Traffic)


def measured(kind: type[TT], mode: str, hits: list[Hit], **extra: Any) -> TT:
    """A mode's record: the fields every mode shares, from its steady traffic, and the scenario's own."""
    return kind(
        mode=mode,
        success_rate=success_rate(hits),
        requests_per_replica=per_replica(hits),
        status_by_replica=status_by_replica(hits),
        latency_ms=latency_ms(hits),
        latencies_ms=_latencies(hits),
        **extra,
    )


def users_loop(users: list[User], on_hit: Callable[[User, Hit], None] = lambda u, h: None) -> RequestLoop[Hit]:
    """Users making requests in the background, in turn, until the loop stops: for faults."""

    def request(worker: int, n: int) -> Hit:
        user = users[n % len(users)]
        hit = user.me()
        on_hit(user, hit)
        return hit

    return RequestLoop(request)


def browser_cookie_limit(url: str, sizes: tuple[int, ...] = (4000, 4080, 5000)) -> tuple[dict[str, bool], str]:
    """Which of these cookie sizes a real browser (Debian's Chromium, through Playwright) keeps."""
    import shutil

    chromium = shutil.which("chromium")
    if chromium is None:
        return {}, "not measured: no chromium (make setup installs it)"
    from playwright.sync_api import sync_playwright

    kept: dict[str, bool] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(f"{url}/api/whoami")
            for size in sizes:
                page.context.clear_cookies()
                page.evaluate("size => fetch('/api/profile-cookie?size=' + size)", size)
                cookies = {c["name"]: c["value"] for c in page.context.cookies()}
                kept[str(size)] = len(cookies.get("profile", "")) == size
            version = browser.version
        finally:
            browser.close()
    return kept, f"Chromium {version}"


def cookie_only(ctx: Context) -> CookieOnlyResult:
    """The story's first stage: the identity in a cookie, in the clear, and no server state."""
    with ctx.cluster(auth_mode="cookie", lb_mode="round_robin") as c:
        url = c.settings.public_url
        users = make_users(url, ctx.users)
        hits = drive(users, ctx.requests)
        victim = users[0]
        captured = dict(victim.client.cookies)
        password_in_cookie = captured.get("password", "").replace("%20", " ") == "demo password 1"
        victim.logout()
        with httpx.Client(base_url=url, cookies=captured) as thief:
            replays = [thief.get("/api/me").status_code for _ in range(9)]
        with httpx.Client(base_url=url, cookies={"user": "bob"}) as forger:
            forged = forger.get("/api/me")
        kept, browser = browser_cookie_limit(url)
        for u in users:
            u.close()
    return measured(
        CookieOnlyResult,
        "cookie/round_robin (AUTH_MODE=cookie)",
        hits,
        forged_accepted=forged.status_code == 200 and forged.json().get("username") == "bob",
        replays_after_logout=len(replays),
        accepted_after_logout=sum(s == 200 for s in replays),
        password_in_cookie=password_in_cookie,
        browser_kept=kept,
        browser=browser,
    )


def _metric_sum(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


def _logins_cost(ctx: Context, store: str, servers: int, logins: int) -> tuple[float, float, float, float]:
    """Logins through nginx on a fresh cluster: (messages, bytes, fan-out seconds) summed over replicas, and
    replica CPU seconds spent meanwhile."""
    with ctx.cluster(auth_mode="session", session_store=store, replicas=servers, lb_mode="round_robin") as c:
        people = make_users(c.settings.public_url, 1)  # a warm-up login
        cpu_before = c.replica_cpu_seconds()
        for _ in range(logins):
            device = User(1, c.settings.public_url, name=people[0].name)  # a new device: one new session each
            device.login()
            device.close()
        cpu = c.replica_cpu_seconds() - cpu_before
        people[0].close()
        urls = [c.settings.replica_url(n) for n in c.settings.replica_names]
        sums = [
            sum(_metric_sum(u, metric) for u in urls)
            for metric in (
                "scaleout_replication_messages_total",
                "scaleout_replication_bytes_total",
                "scaleout_replication_seconds_sum",
                "scaleout_replication_seconds_count",
            )
        ]
    messages, sent, fanout, fanouts = sums
    return messages, sent, fanout / max(1.0, fanouts), cpu


def _kib_per_10k_sessions(ctx: Context) -> tuple[float, float, float]:
    """Memory for 10,000 sessions: in one replica's memory store, in Redis (values, keys, index), and in one
    replica's near-cache (SESSION_CACHE=tracking: the sealed values as Redis returned them, by store key)."""
    import asyncio
    import gc
    import tracemalloc

    from scaleout.core.keyspace import Keyspace
    from scaleout.core.sessions import MemorySessions, RedisSessions, Session, SessionMAC, new_handle
    from scaleout.core.store import Store, make_redis
    from scaleout.lab.redisadmin import redis_command

    def session(i: int) -> Session:
        return Session(
            f"user{i}", new_csrf_token(), time.time(), f"uid{i}", new_handle(), "Mozilla/5.0 demo", "127.0.0.1"
        )

    async def memory() -> float:
        store = MemorySessions(3600, 7200, 10, max_entries=50_000)
        made = [(new_session_id(), session(i)) for i in range(10_000)]
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for sid, s in made:
            await store.put(sid, s)
        used = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        return used / 1024

    async def redis(c: ClusterDriver) -> float:
        s = c.settings

        def used() -> int:
            info = redis_command(
                s.host, s.redis_port, s.redis_admin_username, s.redis_admin_password(), "INFO", "memory"
            )
            line = next(x for x in str(info).splitlines() if x.startswith("used_memory:"))
            return int(line.split(":")[1])

        client = Store(make_redis(s))
        store = RedisSessions(client, client.reads(), 3600, 7200, SessionMAC(b"k" * 32), Keyspace(b"k" * 32))
        before = used()
        for i in range(10_000):
            await store.put(new_session_id(), session(i))
        after = used()
        await client.aclose()
        return (after - before) / 1024

    def near_cache() -> float:
        from scaleout.core.nearcache import NearCache
        from scaleout.core.sessions import session_key

        mac = SessionMAC(b"k" * 32)
        cache = NearCache(50_000, 1.0)
        cache.tracking_started()
        made = []
        for i in range(10_000):
            key = session_key(new_session_id())
            made.append((key, key.encode(), mac.seal(key, session(i).to_json())))
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for key, raw_key, value in made:
            cache.keep(cache.begin((raw_key,)), key, (raw_key,), value)
        used = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        return used / 1024

    in_memory = asyncio.run(memory())
    in_cache = near_cache()
    with ctx.cluster(auth_mode="session", session_store="redis", replicas=1) as c:
        in_redis = asyncio.run(redis(c))
    return round(in_memory, 1), round(in_redis, 1), round(in_cache, 1)


def replication_growth(ctx: Context) -> GrowthResult:
    """What session clustering costs as servers are added: replication against a shared Redis and JWT."""
    sizes = (1, 3) if ctx.users <= 10 else (1, 3, 5, 7, 9)
    logins = 5 if ctx.users <= 10 else 20
    points = []
    for n in sizes:
        messages, sent, fanout_s, cpu_replicated = _logins_cost(ctx, "replicated", n, logins)
        _, _, _, cpu_memory = _logins_cost(ctx, "memory", n, logins)
        points.append(
            GrowthPoint(
                servers=n,
                logins=logins,
                messages_per_login=round(messages / (logins + 1), 2),
                bytes_per_login=round(sent / (logins + 1), 1),
                fanout_ms=round(fanout_s * 1000, 3),
                replica_cpu_ms_per_login_replicated=round(cpu_replicated / logins * 1000, 2),
                replica_cpu_ms_per_login_memory=round(cpu_memory / logins * 1000, 2),
            )
        )
        ctx.say(
            f"  {n} servers: {points[-1].messages_per_login} messages and {points[-1].bytes_per_login} bytes per login"
        )
    in_memory, in_redis, in_cache = _kib_per_10k_sessions(ctx)
    return GrowthResult(points, in_memory, in_redis, 1, in_cache)


def stateful_wall(ctx: Context) -> WallResult:
    with ctx.cluster(auth_mode="session", session_store="memory", lb_mode="round_robin") as c:
        users = make_users(c.settings.public_url, ctx.users)
        ctx.say(f"  {len(users)} users log in, then {ctx.requests} GET /api/me each")
        hits = drive(users, ctx.requests)
        for u in users:
            u.close()
    return measured(WallResult, "session/memory/round_robin", hits)


def sticky(ctx: Context) -> StickyScenario:
    with ctx.cluster(auth_mode="session", session_store="memory", lb_mode="sticky") as c:
        users = make_users(c.settings.public_url, ctx.users)
        half = max(1, ctx.requests // 2)
        before = drive(users, half)
        homes = {u.index: Counter(h.replica for h in before if h.user == u.index).most_common(1)[0][0] for u in users}
        users_per_replica = dict(sorted(Counter(homes.values()).items()))
        busiest = max(users_per_replica, key=lambda r: users_per_replica[r])
        ctx.say(f"  users per replica: {spread_words(users_per_replica)}; killing the busiest, {busiest}")
        killed_at = time.monotonic()
        c.stop(busiest, kill=True)
        after = drive(users, ctx.requests - half)
        lost = sorted({h.user for h in after if h.status == 401})
        pinned = sorted(i for i, r in homes.items() if r == busiest)
        # The lost users log in again (now pinned to a live replica): how long until all are served?
        for i in lost:
            users[i].login()
        relogin = [users[i].me() for i in lost]
        recovered_at = max((h.at for h in relogin), default=killed_at)
        for u in users:
            u.close()
        pinned_result = measured(
            StickyResult,
            "session/memory/sticky",
            before,
            users_per_replica=users_per_replica,
            request_imbalance=imbalance(per_replica(before)),
            user_imbalance=imbalance(users_per_replica),
            killed=busiest,
            pinned_users=pinned,
            lost_users=lost,
            sessions_lost=len(lost),
            failed_5xx=sum(h.status >= 500 for h in after),
            unaffected_success_rate=success_rate([h for h in after if h.user not in lost]),
            relogin_ok=all(h.status == 200 for h in relogin),
            recovery_s=round(recovered_at - killed_at, 3),
            timeline=_timeline(before + after + relogin, killed_at),
        )

    with ctx.cluster(auth_mode="session", session_store="memory", lb_mode="ip_hash") as c:
        count = min(ctx.users, 200)
        nat = make_users(c.settings.public_url, count, lambda i: f"127.0.200.{i + 2}")
        spread = make_users(c.settings.public_url, count, lambda i: f"127.0.{i + 1}.2")
        nat_hits, spread_hits = drive(nat, ctx.requests), drive(spread, ctx.requests)
        for u in nat + spread:
            u.close()

    def users_by_replica(hits: list[Hit]) -> dict[str, int]:
        first: dict[int, str] = {}
        for h in hits:
            first.setdefault(h.user, h.replica)
        return dict(sorted(Counter(first.values()).items()))

    ip_hash = measured(
        IpHashResult,
        "session/memory/ip_hash",
        nat_hits + spread_hits,
        one_nat_users_per_replica=users_by_replica(nat_hits),
        many_networks_users_per_replica=users_by_replica(spread_hits),
    )
    return StickyScenario(pinned_result, ip_hash)


def spread_words(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items())


def clustering(ctx: Context) -> ClusteringResult:
    return _clustering(ctx, "off")


def near_cache(ctx: Context) -> ClusteringResult:
    """Session clustering with SESSION_CACHE=tracking: the same traffic and the same Redis outage."""
    return _clustering(ctx, "tracking")


def _clustering(ctx: Context, cache: str) -> ClusteringResult:
    modes = {"auth_mode": "session", "session_store": "redis", "lb_mode": "round_robin", "session_cache": cache}
    with ctx.cluster(**modes) as c:
        users = make_users(c.settings.public_url, ctx.users)
        hits = drive(users, ctx.requests)
        after_restart = False
        served_again: set[int] = set()
        lost: set[int] = set()

        def heal(user: User, hit: Hit) -> None:
            # With REDIS_PERSISTENCE=none Redis keeps nothing across a restart: those users log in again.
            if after_restart:
                if hit.status == 401:
                    lost.add(user.index)
                    user.login()
                elif hit.status == 200:
                    served_again.add(user.index)

        with users_loop(users, heal) as loop:
            loop.wait(lambda: len(loop.outcomes) >= 20, 10)
            stop_at = time.monotonic()
            c.stop("redis")
            down_at = time.monotonic()  # Redis is gone: every request starting from now has no store
            ctx.say("  Redis stopped")
            loop.wait(lambda: time.monotonic() - down_at > 1.5, 5)
            up_at = time.monotonic()
            after_restart = True
            c.start("redis")
            ctx.say("  Redis started again")
            healed = loop.wait(lambda: len(served_again) == len(users), 30)
            healed_at = time.monotonic()
        for u in users:
            u.close()
    looped = loop.values()
    while_down = [h for h in looped if down_at <= h.at and h.at + h.latency < up_at]
    return measured(
        ClusteringResult,
        "session/redis/round_robin" + (" (SESSION_CACHE=tracking)" if cache == "tracking" else ""),
        hits,
        redis_down=Outage(
            seconds=round(up_at - down_at, 3),
            requests=len(while_down),
            status_503=sum(h.status == 503 for h in while_down),
            status_200=sum(h.status == 200 for h in while_down),
            other=sum(h.status not in (200, 503) for h in while_down),
        ),
        persistence=str(c.settings.redis_persistence),
        sessions_lost_on_restart=len(lost),
        healed=healed,
        recovery_s=round(healed_at - up_at, 3),
        timeline=_timeline(looped, stop_at),
        fault_window=(0.0, round(up_at - stop_at, 3)),
    )


def store_failover(ctx: Context) -> FailoverResult:
    """Session clustering on a Redis that fails over: the primary is SIGKILLed under load."""
    modes = {"auth_mode": "session", "session_store": "redis", "lb_mode": "round_robin", "redis_topology": "sentinel"}
    with ctx.cluster(**modes) as c:
        users = make_users(c.settings.public_url, ctx.users)
        before = drive(users, max(2, ctx.requests // 2))
        latecomer = make_users(c.settings.public_url, 1)[0]  # logs in again and again during the failover

        def log_in(worker: int, n: int) -> int:
            return 200 if latecomer.login() else latecomer.last_status

        with users_loop(users) as loop, RequestLoop(log_in, workers=1) as logins:
            loop.wait(lambda: len(loop.outcomes) >= 40, 10)
            killed = c.primary() or "redis-1"
            killed_at = time.monotonic()
            c.stop(killed, kill=True)
            ctx.say(f"  {killed} (the primary) killed")
            loop.wait(lambda: c.primary() not in (None, killed), 20)
            elected = time.monotonic()
            new_primary = c.primary() or "?"
            ctx.say(f"  the Sentinels promoted {new_primary}")
            loop.wait(lambda: len(loop.between(elected, float("inf"))) >= 40, 20)
            loop.wait(lambda: {h.status for h in loop.values()[-30:]} == {200}, 20)
        hits = loop.values()
        after_kill = [h for h in hits if h.at >= killed_at]
        last_failure = max((h.at for h in after_kill if h.status != 200), default=killed_at)
        during = [h for h in after_kill if h.at <= last_failure]
        logins_during = [o.value for o in logins.outcomes if killed_at <= o.started <= last_failure]
        lost = sum(u.me().status == 401 for u in users)  # acknowledged before the kill: all still valid?
        for u in [*users, latecomer]:
            u.close()
        c.start(killed)  # back as a replica, before the cluster goes down
    return measured(
        FailoverResult,
        "session/redis/round_robin (REDIS_TOPOLOGY=sentinel)",
        before,
        killed=killed,
        new_primary=new_primary,
        recovery_s=round(last_failure - killed_at, 3),
        during=dict(sorted(Counter(str(h.status) for h in during).items())),
        sessions_lost=lost,
        logins_during=dict(sorted(Counter(str(s) for s in logins_during).items())),
        timeline=_timeline(hits, killed_at),
        fault_window=(0.0, round(last_failure - killed_at, 3)),
    )


def jwt(ctx: Context) -> JwtResult:
    with ctx.cluster(auth_mode="jwt", jwt_revocation="none", lb_mode="round_robin") as c:
        users = make_users(c.settings.public_url, ctx.users)
        before = drive(users, ctx.requests)
        outage_at = time.monotonic()
        c.stop("redis")
        c.stop("auth")
        ctx.say("  Redis and auth stopped")
        during = drive(users, ctx.requests)
        back_at = time.monotonic()
        c.start("redis")
        c.start("auth")
        token = users[0].token or ""
        for u in users:
            u.close()
    cookie = f"sid={new_session_id()}; csrf_token={new_csrf_token()}"
    return measured(
        JwtResult,
        "jwt/round_robin",
        before,
        success_rate_with_redis_and_auth_down=success_rate(during),
        token_bytes=len(f"Bearer {token}"),
        session_cookie_bytes=len(cookie),
        timeline=_timeline(before + during, outage_at),
        fault_window=(0.0, round(back_at - outage_at, 3)),
    )


def seconds_to_exp(token: str) -> float:
    import base64
    import json

    payload = token.split(".")[1]
    exp = float(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"])
    return max(0.0, exp - time.time())


def _replay_after_logout(c: ClusterDriver, replays: int) -> tuple[int, int, dict[str, int], float]:
    """A user logs out while an attacker replays the stolen credential on every replica."""
    victim = make_users(c.settings.public_url, 1)[0]
    thief = httpx.Client(base_url=c.settings.public_url, timeout=10.0)
    for cookie in victim.client.cookies.jar:
        thief.cookies.set(cookie.name, cookie.value or "")
    headers = {"Authorization": f"Bearer {victim.token}"} if victim.token else {}
    assert thief.get("/api/me", headers=headers).status_code == 200
    logout_status = victim.logout()
    replayed = [thief.get("/api/me", headers=headers) for _ in range(replays)]
    accepted = [r for r in replayed if r.status_code == 200]
    window = seconds_to_exp(victim.token) if accepted and victim.token else 0.0
    victim.close()
    thief.close()
    by_replica = dict(Counter(r.headers.get("x-replica", "-") for r in accepted))
    return logout_status, len(accepted), by_replica, round(window, 1)


def _revoke_other_device(c: ClusterDriver, within: float = 3.0) -> DeviceRevocation:
    """A user ends their other device's session (`DELETE /api/sessions/{id}`) while that device keeps
    replaying on every replica: how long until every replica refuses it."""
    phone = make_users(c.settings.public_url, 1)[0]
    laptop = User(1, c.settings.public_url, name=phone.name)
    laptop.login()
    listed = laptop.client.get("/api/sessions", headers=laptop.auth_headers()).json()["sessions"]
    handle = next(s["id"] for s in listed if s["current"])
    status = phone.client.delete(f"/api/sessions/{handle}", headers=phone.auth_headers(write=True)).status_code
    returned = time.monotonic()
    accepted, streak, refused_after = 0, 0, None
    while time.monotonic() - returned < within:
        hit = laptop.me()
        if hit.status == 200:
            accepted, streak = accepted + 1, 0
            continue
        streak += 1
        if streak == c.settings.replicas * 2:  # every replica in turn, twice
            refused_after = max(0.0, hit.at - returned)
            break
    window = seconds_to_exp(laptop.token) if refused_after is None and laptop.token else None
    phone.close()
    laptop.close()
    return DeviceRevocation(
        revoke_status=status,
        accepted_after_revoke=accepted,
        seconds_to_refuse=None if refused_after is None else round(refused_after, 3),
        still_valid_for_s=None if window is None else round(window, 1),
    )


def _me_p50(c: ClusterDriver, n: int) -> float:
    user = make_users(c.settings.public_url, 1)[0]
    hits = [user.me() for _ in range(n)]
    user.close()
    return latency_ms(hits).p50


def _invalidation_windows(c: Cluster, n: int) -> list[float]:
    """SESSION_CACHE=tracking: `n` sessions, each read into every replica's near-cache, then ended by a write
    to Redis (as the auth service ends one); for each, the milliseconds from that write's acknowledgement
    until every replica refuses the session, asked directly and all at once, again and again."""
    import asyncio

    from scaleout.core.sessions import RedisSessions, Session, new_handle, session_key
    from scaleout.core.store import make_store

    s = c.settings
    replicas = [("127.0.0.1" if s.host == "0.0.0.0" else s.host, s.api_port(name)) for name in s.replica_names]

    async def run() -> list[float]:
        store = make_store(s)
        writer = RedisSessions.for_settings(s, store, store.reads())
        # One keep-alive connection per replica and a bare HTTP/1.1 exchange: a poll costs the replica's
        # answer, not a client library's overhead, so the window measured is the invalidation's.
        pools = [Pool(host, port) for host, port in replicas]
        windows = []
        for _ in range(n):
            sid = writer.new_id("uid-demo")
            await writer.put(sid, Session("demo", new_csrf_token(), time.time(), "uid-demo", new_handle()))
            request = f"GET /api/me HTTP/1.1\r\nHost: replica\r\nCookie: sid={sid}\r\n\r\n".encode()

            async def ask(pool: Pool, request: bytes = request) -> int:
                conn = await pool.get()
                status, reusable = await exchange(*conn, request)
                (pool.put if reusable else pool.drop)(conn)
                return status

            for _ in range(3):  # each replica renews, reads into its cache, then answers from it
                assert await asyncio.gather(*(ask(p) for p in pools)) == [200] * len(pools)
            await store.run(session_key(sid), partial(_delete, session_key(sid)))  # the end, as Redis sees it
            acknowledged = time.perf_counter()
            pending = list(pools)
            while pending:
                statuses = await asyncio.gather(*(ask(p) for p in pending))
                pending = [p for p, status in zip(pending, statuses, strict=True) if status != 401]
                if time.perf_counter() - acknowledged > 5.0:
                    raise RuntimeError("a replica still accepted an ended session after 5 s")
            windows.append((time.perf_counter() - acknowledged) * 1000)
        for pool in pools:
            pool.close()
        await store.aclose()
        return windows

    return asyncio.run(run())


async def _delete(key: str, pipe: Any) -> None:
    pipe.delete(key)


def revocation(ctx: Context) -> RevocationResult:
    out: dict[str, RevocationMode] = {}
    samples = max(50, ctx.requests * 5)
    near_cache: list[float] = []
    with ctx.cluster(auth_mode="session", session_store="redis", lb_mode="round_robin", session_cache="tracking") as c:
        status, accepted, by_replica, window = _replay_after_logout(c, replays=9)
        device = _revoke_other_device(c)
        out["session/redis + cache"] = RevocationMode(status, 9, accepted, by_replica, window, device)
        if isinstance(c, Cluster):  # the replicas asked one by one: their own ports, on this machine
            n = 1000 if ctx.requests >= 100 else 100
            ctx.say(f"  session/redis + cache: {n} sessions ended in Redis while every replica held them")
            near_cache = _invalidation_windows(c, n)
    for key, modes in (
        ("session/redis", {"auth_mode": "session", "session_store": "redis", "lb_mode": "round_robin"}),
        ("session/memory/sticky", {"auth_mode": "session", "session_store": "memory", "lb_mode": "sticky"}),
        ("jwt/none", {"auth_mode": "jwt", "jwt_revocation": "none", "lb_mode": "round_robin"}),
        ("jwt/denylist", {"auth_mode": "jwt", "jwt_revocation": "denylist", "lb_mode": "round_robin"}),
    ):
        with ctx.cluster(**modes) as c:
            status, accepted, by_replica, window = _replay_after_logout(c, replays=9)
            device = _revoke_other_device(c)
            p50 = _me_p50(c, samples) if key.startswith("jwt") else None
            out[key] = RevocationMode(status, 9, accepted, by_replica, window, device, p50)
    none_p50, deny_p50 = out["jwt/none"].me_p50_ms or 0.0, out["jwt/denylist"].me_p50_ms or 0.0
    windows = {f"p{round(q * 100)}": round(percentile(near_cache, q), 2) for q in (0.5, 0.9, 0.99, 1.0)}
    return RevocationResult(out, round(deny_p50 - none_p50, 3), len(near_cache), windows if near_cache else {})


def live_switch(ctx: Context) -> LiveSwitchResult:
    switches: list[Switch] = []
    failures = Counter[str]()  # what went wrong, by status code or exception, for the report
    retried = Counter[str]()
    with ctx.cluster(auth_mode="session", session_store="redis", lb_mode="round_robin") as c:
        url = c.settings.public_url
        clients = [httpx.Client(base_url=url, timeout=5.0) for _ in range(4)]

        def get(worker: int) -> httpx.Response:
            if worker % 2 == 0:  # half the loops open a fresh connection per request
                return httpx.get(f"{url}/api/whoami", timeout=5.0)
            client = clients[worker]
            try:
                return client.get("/api/whoami")
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                # A retiring nginx worker closed (or reset) this idle keep-alive connection as the request
                # went out; like browsers (RFC 9112 9.3.1), retry an idempotent request once on a new
                # connection. Counted, and reported: it is the client's side of a reload.
                retried["keepalive_closed"] += 1
                return client.get("/api/whoami")

        def request(worker: int, n: int) -> tuple[str, int]:
            kind = "fresh" if worker % 2 == 0 else "keep-alive"
            try:
                r = get(worker)
            except httpx.HTTPError as exc:
                failures[f"{kind}: {type(exc).__name__}"] += 1
                return "-", 599
            if r.status_code != 200:
                failures[f"{kind}: HTTP {r.status_code}"] += 1
            return r.headers.get("x-replica", "-"), r.status_code

        with RequestLoop(request) as loop:
            previous = "round_robin"
            for mode in ("sticky", "ip_hash", "round_robin"):
                time.sleep(0.5)  # a window of traffic under the current mode, for the "before" distribution
                started = time.monotonic()
                c.lb(LBMode(mode))
                ended = time.monotonic()
                time.sleep(0.5)
                window = loop.between(started - 0.5, ended + 0.5)
                switches.append(
                    Switch(
                        from_mode=previous,
                        to_mode=mode,
                        reload_s=round(ended - started, 3),
                        requests_around_reload=len(window),
                        failed=sum(status != 200 for _, status in window),
                        before=dict(Counter(r for r, _ in loop.between(started - 0.5, started))),
                        after=dict(Counter(r for r, _ in loop.between(ended, ended + 0.5))),
                    )
                )
                ctx.say(f"  {previous} -> {mode}: {switches[-1].failed} failed")
                previous = mode
        for client in clients:
            client.close()
    records = loop.values()
    return LiveSwitchResult(
        switches=switches,
        requests=len(records),
        failed=sum(status != 200 for _, status in records),
        failures=dict(failures),
        keepalive_retries=retried["keepalive_closed"],
    )


FAULT_PHASES = (("latency", "50ms"), ("latency", "2s"), ("blackhole", None), ("reset", None))


def slow_store(ctx: Context) -> SlowStoreResult:
    """Session clustering while the store is slow, then silent, then resetting (the fault proxy): every
    request gets 200 within its budget or a fast 503, and 200 again once the fault clears."""
    with ctx.cluster(auth_mode="session", session_store="redis", lb_mode="round_robin", fault_proxy=True) as c:
        users = make_users(c.settings.public_url, ctx.users)
        phases = []
        hold = 1.0 if ctx.requests < 100 else 3.0
        with users_loop(users) as loop:
            loop.wait(lambda: len(loop.outcomes) >= 20, 10)
            for kind, value in FAULT_PHASES:
                now = c.fault("redis", kind, value)
                ctx.say(f"  fault: {now.describe()}")
                start = time.monotonic()
                loop.wait(lambda: time.monotonic() - start > hold, hold + 5)  # noqa: B023 - called at once
                cleared = time.monotonic()
                c.fault("redis", "clear")
                loop.wait(lambda: time.monotonic() - cleared > 1.5, 10)  # noqa: B023
                hits = [h for h in loop.values() if start <= h.at]
                during = [h for h in hits if h.at < cleared]
                after = [h for h in hits if h.at >= cleared]
                bad = [h.at for h in after if h.status != 200]
                answers = [h.latency * 1000 for h in during]
                phases.append(
                    FaultPhase(
                        now.describe(),
                        len(during),
                        dict(sorted(Counter(str(h.status) for h in during).items())),
                        round(percentile(answers, 0.5), 2),
                        round(percentile(answers, 0.99), 2),
                        round(max(answers, default=0.0), 2),
                        round(max(bad, default=cleared) - cleared, 3),
                    )
                )
        for u in users:
            u.close()
    return SlowStoreResult(c.settings.redis_timeout * 1000, phases)


OVERLOAD_INFLIGHT = 4  # requests nginx lets each replica hold: small, so that the capacity is known
OVERLOAD_STORE_MS = 20  # what the fault proxy adds to every store read
CPU_BOUND_INFLIGHT = 3  # at the capped rate, a few ms of queue per slot: Little's law within 50 ms


def _step(x: float, run: OpenLoopRun) -> OverloadStep:
    counts = run.statuses()
    total = max(1, sum(counts.values()))
    return OverloadStep(
        x,
        round(run.offered_rate, 1),
        round(run.admitted_rate(), 1),
        run.admitted_ms(0.5),
        run.admitted_ms(0.99),
        run.slowest_ms(),
        round(counts.get("503", 0) / total, 3),
        sum(n for k, n in counts.items() if k not in ("200", "503")),
        run.lag_ms(0.99),
    )


def overload(ctx: Context) -> OverloadResult:
    """Open-loop load beyond what the cluster can serve, two ways. First at half, twice and five times a
    known capacity: each replica may hold OVERLOAD_INFLIGHT requests (nginx `max_conns`) and each waits
    OVERLOAD_STORE_MS on the store, so the cluster serves replicas x inflight / latency per second. Then
    CPU-bound, in session/redis and jwt (with the denylist) modes: the replicas capped to a fraction of a
    core, the capacity measured by wrk, and 1x, 2x and 5x of it offered. The excess must be shed, not queued."""
    import uvloop

    from scaleout.lab.openloop import offer

    seconds = 2.0 if ctx.requests < 100 else 30.0
    modes: dict[str, object] = {"auth_mode": "session", "session_store": "redis", "lb_mode": "round_robin"}
    with ctx.cluster(**modes, fault_proxy=True, replica_max_inflight=OVERLOAD_INFLIGHT) as c:
        assert isinstance(c, Cluster)  # the fault proxies run with the local cluster
        s = c.settings
        user = make_users(s.public_url, 1)[0]
        header, value = user.credential.header()
        user.close()
        capacity = s.replicas * OVERLOAD_INFLIGHT / (OVERLOAD_STORE_MS / 1000)
        steps = []
        try:
            c.fault("redis", "latency", f"{OVERLOAD_STORE_MS}ms")
            for x in (0.5, 1.0, 2.0, 5.0):
                ctx.say(f"  offering {x:g}x the capacity ({x * capacity:.0f} requests/s) for {seconds:g} s")
                run = uvloop.run(offer(s.host, s.nginx_port, "/api/me", x * capacity, seconds, {header: value}))
                steps.append(_step(x, run))
        finally:
            c.fault("redis", "clear")
        after = uvloop.run(offer(s.host, s.nginx_port, "/api/me", 0.5 * capacity, 1.0, {header: value}))
    all_served = after.statuses() == {"200": len(after.shots)}
    cpu_bound = []
    for mode, revocation in (("session", "none"), ("jwt", "denylist")):
        label = f"{mode}/redis" if mode == "session" else "jwt + denylist"
        overrides = {**modes, "auth_mode": mode, "jwt_revocation": revocation}
        with ctx.cluster(**overrides, replica_max_inflight=CPU_BOUND_INFLIGHT) as c:
            assert isinstance(c, Cluster)  # the CPU cap acts on local processes
            user = make_users(c.settings.public_url, 1)[0]
            credential = user.credential.header()
            user.close()
            pids = [c.services[n].pid or 0 for n in c.settings.replica_names]
            ctx.say(f"  {label}: CPU-bound, 1x, 2x and 5x the capacity wrk measures, {seconds:g} s each")
            r = cpu_bound_overload(c.settings, pids, credential, ctx.workdir, seconds)
        cpu_bound.append(
            CPUBoundOverload(
                label,
                r.cpus,
                round(r.capacity_per_s, 1),
                [_step(x, run) for x, run in r.runs.items()],
                max(r.rss_growth_kib),
                r.recovery_s,
            )
        )
    return OverloadResult(
        round(capacity, 1), OVERLOAD_INFLIGHT, OVERLOAD_STORE_MS, steps, all_served, cpu_bound, CPU_BOUND_INFLIGHT
    )


RUNNERS: dict[str, Callable[[Context], ScenarioResult]] = {
    "cookie_only": cookie_only,
    "replication_growth": replication_growth,
    "stateful_wall": stateful_wall,
    "sticky": sticky,
    "clustering": clustering,
    "near_cache": near_cache,
    "store_failover": store_failover,
    "jwt": jwt,
    "revocation": revocation,
    "live_switch": live_switch,
    "slow_store": slow_store,
    "overload": overload,
}


def run(ctx: Context, names: list[str], on_done: Callable[[str], None] = lambda _: None) -> DemoResults:
    results = DemoResults(target=ctx.target)
    for name in names:
        started = time.monotonic()
        why = ctx.driver(Settings(cluster_dir=ctx.workdir)).cannot_run(name)
        if why is not None:  # declared by the driver: the scenario's rows stay absent from the report
            ctx.say(f"scenario {name}: not on {ctx.target} ({why})")
            on_done(name)
            continue
        ctx.say(f"scenario {name}")
        result = RUNNERS[name](ctx)
        result.duration_s = round(time.monotonic() - started, 2)
        setattr(results, name, result)
        on_done(name)
    return results
