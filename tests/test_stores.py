"""Unit tests of the session stores and the Redis-backed pieces, against a real redis-server."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from scaleout.core.config import Settings
from scaleout.core.credentials import Ambiguous, Malformed, bearer_token, single_cookie
from scaleout.core.sessions import (
    MemorySessions,
    RedisSessions,
    Session,
    SessionCookie,
    is_well_formed,
    memory_key,
    new_session_id,
    redis_key,
    session_key,
)
from scaleout.core.store import (
    Coalescer,
    Denylist,
    RefreshOutcome,
    RefreshTokens,
    StoreUnavailable,
    Throttle,
    make_redis,
)


def run(coro):
    return asyncio.run(coro)


def test_session_ids_are_256_bit_urlsafe_and_unique() -> None:
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 43 and is_well_formed(i) for i in ids)
    assert not is_well_formed("x" * 42)
    assert not is_well_formed("x" * 42 + "=")
    assert not is_well_formed("../" + "x" * 40)


def test_stores_see_only_a_hash_of_the_id() -> None:
    sid = new_session_id()
    assert sid not in session_key(sid)
    assert len(session_key(sid)) == len("sess:") + 64


def test_memory_store_enforces_idle_and_absolute_lifetimes() -> None:
    async def scenario() -> None:
        store = MemorySessions(idle_ttl=60, absolute_ttl=120)
        sid = new_session_id()
        await store.put(sid, Session("alice", "c", time.time()))
        assert (await store.get(sid)).username == "alice"
        assert await store.get(new_session_id()) is None
        old = new_session_id()
        await store.put(old, Session("bob", "c", time.time() - 500))  # created long ago
        assert await store.get(old) is None
        await store.delete(sid)
        assert await store.get(sid) is None

    run(scenario())


def test_memory_store_is_bounded() -> None:
    async def scenario() -> int:
        store = MemorySessions(idle_ttl=60, absolute_ttl=120, max_entries=10)
        for _ in range(50):
            await store.put(new_session_id(), Session("u", "c", time.time()))
        return len(store)

    assert run(scenario()) == 10


def test_redis_store_round_trip_idle_ttl_and_absolute_lifetime(redis_url: str) -> None:
    async def scenario() -> None:
        redis = Redis.from_url(redis_url)
        store = RedisSessions(redis, Coalescer(redis), idle_ttl=30, absolute_ttl=60)
        sid = new_session_id()
        await store.put(sid, Session("alice", "c", time.time()))
        assert (await store.get(sid)).username == "alice"
        assert 0 < await redis.ttl(session_key(sid)) <= 30
        assert await redis.get(f"sess:{sid}") is None  # the raw ID is never a key
        old = new_session_id()
        await store.put(old, Session("bob", "c", time.time() - 61))
        assert await store.get(old) is None
        assert await redis.exists(session_key(old)) == 0
        await redis.aclose()

    run(scenario())


def test_unreachable_redis_is_store_unavailable_quickly() -> None:
    async def scenario() -> float:
        from helpers import free_ports

        (port,), _ = free_ports(1)
        redis = make_redis(Settings(redis_port=port))
        store = RedisSessions(redis, Coalescer(redis), 30, 60)
        start = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.get(new_session_id())
        with pytest.raises(StoreUnavailable):
            await Denylist(redis, Coalescer(redis)).contains("x" * 22)
        return time.monotonic() - start

    assert run(scenario()) < 3


def test_refresh_tokens_are_single_use_and_reuse_revokes_the_family(redis_url: str) -> None:
    async def scenario() -> None:
        redis = Redis.from_url(redis_url)
        tokens = RefreshTokens(redis, ttl=60)
        await tokens.remember("jti-1" * 4)
        assert await tokens.spend("jti-1" * 4, "famA") is RefreshOutcome.ok
        assert await tokens.spend("jti-1" * 4, "famA") is RefreshOutcome.reused
        await tokens.remember("jti-2" * 4)
        assert await tokens.spend("jti-2" * 4, "famA") is RefreshOutcome.revoked
        assert await tokens.spend("never-issued", "famB") is RefreshOutcome.unknown
        await tokens.remember("jti-3" * 4)
        results = await asyncio.gather(*(tokens.spend("jti-3" * 4, "famC") for _ in range(10)))
        assert results.count(RefreshOutcome.ok) == 1
        await redis.aclose()

    run(scenario())


def test_throttle_counts_failures_per_account_and_address(redis_url: str) -> None:
    async def scenario() -> None:
        redis = Redis.from_url(redis_url)
        throttle = Throttle(redis, window=30, account_max=3, ip_max=5)
        user = f"user{time.time_ns()}"
        for _ in range(3):
            assert (await throttle.check(user, "10.0.0.1")).allowed
            await throttle.record_failure(user, "10.0.0.1")
        verdict = await throttle.check(user, "10.0.0.2")
        assert not verdict.allowed and 0 < verdict.retry_after <= 30
        other = f"other{time.time_ns()}"
        await throttle.record_failure(other, "10.0.0.1")
        await throttle.record_failure(other, "10.0.0.1")
        assert not (await throttle.check(f"third{time.time_ns()}", "10.0.0.1")).allowed  # the address: 5 failures
        await redis.aclose()

    run(scenario())


def test_denylist_entries_expire_with_the_token(redis_url: str) -> None:
    async def scenario() -> None:
        redis = Redis.from_url(redis_url)
        deny = Denylist(redis, Coalescer(redis))
        await deny.add("j" * 22, int(time.time()) + 5)
        assert await deny.contains("j" * 22)
        assert 0 < await redis.ttl("deny:" + "j" * 22) <= 6
        assert not await deny.contains("k" * 22)
        await redis.aclose()

    run(scenario())


def test_credentials_are_read_strictly() -> None:
    h = [(b"cookie", b"a=1; sid=abc; b=2")]
    assert single_cookie(h, "sid") == "abc"
    with pytest.raises(Ambiguous):
        single_cookie([(b"cookie", b"sid=a; sid=b")], "sid")
    with pytest.raises(Ambiguous):
        single_cookie([(b"cookie", b"sid=a"), (b"cookie", b"sid=b")], "sid")
    assert single_cookie([(b"cookie", b"xsid=a")], "sid") is None
    assert bearer_token([(b"authorization", b"Bearer t.o.k")]) == "t.o.k"
    assert bearer_token([(b"authorization", b"bearer t.o.k")]) == "t.o.k"
    assert bearer_token([(b"authorization", b"Basic dXNlcjpwYXNz")]) is None
    with pytest.raises(Ambiguous):
        bearer_token([(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")])


def test_settings_defaults_match_the_contract() -> None:
    s = Settings()
    assert (s.auth_mode, s.session_store, s.lb_mode, s.jwt_revocation, s.jwt_alg, s.replicas) == (
        "session",
        "redis",
        "round_robin",
        "none",
        "RS256",
        3,
    )
    assert (s.nginx_port, s.auth_port, s.redis_port, s.api_port("api-2")) == (8080, 9000, 6380, 8002)
    with pytest.raises(ValueError):
        Settings(replicas=10)
    with pytest.raises(ValueError):
        Settings(auth_mode="cookie")
    with pytest.raises(ValueError):
        Settings(argon2_memory_kib=1024)  # below OWASP's minimum


def test_session_cookie_reader_memoises_only_what_the_header_says() -> None:
    reader = SessionCookie("sid", memory_key, max_entries=4)
    sid = new_session_id()
    header = [(b"host", b"x"), (b"cookie", f"lb_route=api-1; sid={sid}".encode())]
    first = reader.read(header)
    assert first == (sid, memory_key(sid.encode()))
    assert reader.read(header) is first  # the second request with the same header: one dict lookup
    assert reader.read([(b"cookie", b"other=1")]) is None
    assert reader.read([]) is None
    with pytest.raises(Malformed):
        reader.read([(b"cookie", b"sid=../../etc/passwd")])
    with pytest.raises(Ambiguous):
        reader.read([(b"cookie", f"sid={sid}; sid={new_session_id()}".encode())])
    # Two Cookie headers are read together every time, even when one of them alone is remembered.
    with pytest.raises(Ambiguous):
        reader.read([*header, (b"cookie", f"sid={new_session_id()}".encode())])
    for _ in range(10):
        reader.read([(b"cookie", f"sid={new_session_id()}".encode())])
    assert len(reader._memo) <= 4


def test_memory_store_forgets_a_deleted_session_even_after_the_cookie_was_read() -> None:
    async def scenario() -> None:
        store = MemorySessions(idle_ttl=60, absolute_ttl=120)
        reader = SessionCookie("sid", store.key)
        sid = new_session_id()
        await store.put(sid, Session("alice", "c", time.time()))
        header = [(b"cookie", f"sid={sid}".encode())]
        _, key = reader.read(header)
        assert store.lookup(key).username == "alice"
        await store.delete(sid)
        _, key = reader.read(header)
        assert store.lookup(key) is None

    run(scenario())


def test_redis_store_forgets_a_deleted_session_although_its_bytes_were_decoded_before(redis_url: str) -> None:
    async def scenario() -> None:
        redis = Redis.from_url(redis_url)
        store = RedisSessions(redis, Coalescer(redis), idle_ttl=30, absolute_ttl=60)
        sid = new_session_id()
        await store.put(sid, Session("alice", "c", time.time()))
        for _ in range(2):  # the second read decodes from the memo
            assert (await store.lookup(redis_key(sid.encode()))).username == "alice"
        await store.delete(sid)
        assert await store.lookup(redis_key(sid.encode())) is None
        await redis.aclose()

    run(scenario())
