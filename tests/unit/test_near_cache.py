"""The near-cache (SESSION_CACHE=tracking) against a real redis-server: what it serves without asking Redis,
and the rules that keep it honest (invalidation, a killed or silent connection, bounds)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from scaleout.core.keyspace import Keyspace
from scaleout.core.nearcache import MISS, NearCache
from scaleout.core.revocation import Denylist
from scaleout.core.sessions import RedisSessions, Session, SessionMAC, new_handle, new_session_id, session_key
from scaleout.core.store import Coalescer, Durability, Store, StoreUnavailable
from scaleout.lab.faults import FaultProxy, set_fault
from scaleout.lab.ports import free_ports

KEYS = Keyspace(b"k" * 32)
MAC = SessionMAC(b"k" * 32)
STALENESS = 0.05


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, socket_timeout=0.3, socket_connect_timeout=0.3)
    try:
        yield client
    finally:
        await client.aclose()


def stores(redis: Redis, reader_redis: Redis | None = None) -> tuple[RedisSessions, RedisSessions, NearCache]:
    """The auth service's store (writes, no cache; revocations wait out the staleness) and a replica's."""
    cache = NearCache(1000, STALENESS)
    writer = RedisSessions(Store(redis, Durability(settle=STALENESS)), Coalescer(redis), 30, 60, MAC, KEYS)
    reader_client = reader_redis or redis
    reader = RedisSessions(Store(reader_client), Coalescer(reader_client, cache=cache), 30, 60, MAC, KEYS)
    return writer, reader, cache


async def logged_in(writer: RedisSessions, reader: RedisSessions, cache: NearCache) -> tuple[str, str]:
    """A session the reader's cache holds: its ID and store key."""
    sid = new_session_id()
    await writer.put(sid, Session("alice", "c", time.time(), "uid-alice", new_handle()))
    key = session_key(sid)
    for _ in range(3):  # a renewal (GETEX: not tracked), a GET that fills the cache, then a hit
        assert await reader.lookup(key) is not None
    assert cache.stats.hits >= 1
    return sid, key


async def gets(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_get", {}).get("calls", 0))


def test_bounded_and_a_read_in_flight_across_a_change_is_not_kept() -> None:
    cache = NearCache(max_entries=2, staleness=10.0)
    cache.tracking_started()
    cache.confirm(time.perf_counter())
    for name in (b"a", b"b", b"c"):
        cache.keep(cache.begin((name,)), name, (name,), name.upper())
    assert len(cache) == 2 and cache.get(b"a") is MISS and cache.get(b"c") == b"C"  # least recent out
    token = cache.begin((b"d",))
    cache.invalidate([b"d"])  # changed while the read was in flight: its answer may predate the change
    cache.keep(token, b"d", (b"d",), b"old")
    assert cache.get(b"d") is MISS
    token = cache.begin((b"e",))
    cache.flush()  # the connection went: so did the read's guarantee
    cache.tracking_started()
    cache.confirm(time.perf_counter())
    cache.keep(token, b"e", (b"e",), b"old")
    assert cache.get(b"e") is MISS
    cache.keep(cache.begin((b"x", b"y")), "pair", (b"x", b"y"), True)
    cache.invalidate([b"y"])  # either key of a two-key answer
    assert cache.get("pair") is MISS


@pytest.mark.anyio
async def test_hits_cost_redis_nothing_and_a_logout_elsewhere_is_seen_within_5_ms(redis: Redis) -> None:
    writer, reader, cache = stores(redis)
    _, key = await logged_in(writer, reader, cache)
    before = await gets(redis)
    for _ in range(200):
        assert await reader.lookup(key) is not None
    assert await gets(redis) == before
    started = time.perf_counter()
    await redis.delete(key)  # a plain write elsewhere (no settle): the push alone must do it
    while await reader.lookup(key) is not None:
        assert time.perf_counter() - started < 0.005
        await asyncio.sleep(0)
    assert cache.stats.invalidations >= 1


@pytest.mark.anyio
async def test_not_denied_is_cached_until_the_denial_is_added(redis: Redis) -> None:
    cache = NearCache(1000, STALENESS)
    reads = Coalescer(redis, cache=cache)
    deny = Denylist(Store(redis), reads, access_ttl=60)
    writer = Denylist(Store(redis, Durability(settle=STALENESS)), Coalescer(redis), access_ttl=60)
    jti, fam = new_handle(), new_handle()
    assert not await deny.contains(jti, fam)
    assert not await deny.contains(jti, fam) and cache.stats.hits == 1  # "not denied", from the cache
    await writer.add_family(fam)
    assert await deny.contains(jti, fam)


@pytest.mark.anyio
async def test_a_killed_connection_empties_the_cache_before_anything_is_served(redis: Redis) -> None:
    writer, reader, cache = stores(redis)
    _, key = await logged_in(writer, reader, cache)
    tracking = [c for c in await redis.client_list() if "t" in c["flags"]]  # this test's, and earlier ones'
    assert tracking
    for c in tracking:
        await redis.client_kill_filter(_id=c["id"])
    await redis.delete(key)  # its invalidation has no connection to go to
    assert await reader.lookup(key) is None
    assert cache.stats.flushes >= 1


@pytest.mark.anyio
async def test_a_silent_stream_stops_the_cache_and_a_revocation_waits_it_out(redis: Redis, tmp_path: Path) -> None:
    """The replica reaches Redis through a proxy that then swallows everything (no reset): the logout's
    invalidation never arrives, and still the old session is never accepted after the logout returns."""
    (port,), _ = free_ports("127.0.0.1", 1)
    kw = redis.connection_pool.connection_kwargs
    state = tmp_path / "redis.json"
    proxy = asyncio.get_running_loop().create_task(
        FaultProxy(("127.0.0.1", port), (kw["host"], kw["port"]), state).serve()
    )
    via_proxy = Redis(host="127.0.0.1", port=port, socket_timeout=0.3, socket_connect_timeout=0.3)
    try:
        for _ in range(100):
            try:
                await via_proxy.ping()
                break
            except OSError:
                await asyncio.sleep(0.01)
        writer, reader, cache = stores(redis, via_proxy)
        sid, key = await logged_in(writer, reader, cache)
        await asyncio.sleep(3 * STALENESS)  # idle: the heartbeat keeps the cache usable
        hits = cache.stats.hits
        assert await reader.lookup(key) is not None and cache.stats.hits == hits + 1
        await asyncio.to_thread(set_fault, state, "blackhole", None)
        started = time.perf_counter()
        await writer.delete(sid)  # its invalidation never reaches the reader; the logout waits out the staleness
        assert time.perf_counter() - started >= STALENESS
        with pytest.raises(StoreUnavailable):  # not the cached session: Redis is asked, and is silent
            await reader.lookup(key)
    finally:
        proxy.cancel()
        await via_proxy.aclose()


@pytest.mark.anyio
async def test_redis_tracks_a_bounded_table_and_invalidates_what_it_drops(redis: Redis) -> None:
    await redis.config_set("tracking-table-max-keys", 100)
    try:
        writer, reader, cache = stores(redis)
        keys = [(await logged_in(writer, reader, cache))[1] for _ in range(150)]
        info = await redis.info("stats")
        assert int(info["tracking_total_keys"]) <= 100
        # What Redis stopped tracking it invalidated first: those entries are gone from the cache too.
        assert len(cache) <= 100 + 1
        assert cache.get(keys[0]) is MISS
    finally:
        await redis.config_set("tracking-table-max-keys", 0)


def test_a_million_distinct_sessions_read_keep_a_replicas_memory_bounded() -> None:
    """Rule: the replica's cache stays bounded however many distinct sessions it reads (a fuzzer's random
    cookies included: an absent session is cached too)."""
    from scaleout.lab.processes import rss_kib

    cache = NearCache(max_entries=10_000, staleness=10.0)
    cache.tracking_started()
    value = b"x" * 300  # about a sealed session value

    def read(first: int, last: int) -> None:
        for i in range(first, last):
            key = b"sess:%064d" % i
            cache.keep(cache.begin((key,)), key, (key,), value)

    read(0, 100_000)
    at_100k = rss_kib(os.getpid())
    read(100_000, 1_000_000)
    grown = rss_kib(os.getpid()) - at_100k
    assert len(cache) == 10_000 and len(cache._by_key) == 10_000
    assert grown < 8 * 1024, f"{grown} KiB more after 900,000 more distinct reads"
