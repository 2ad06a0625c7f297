"""Unit tests of the session stores and the Redis-backed pieces, against a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from scaleout.core.config import Settings
from scaleout.core.credentials import Ambiguous, Malformed, bearer_token, single_cookie
from scaleout.core.keyspace import Keyspace, denied_family, denied_token, throttle_keys
from scaleout.core.revocation import Denylist, RefreshOutcome, RefreshTokens
from scaleout.core.sessions import (
    MemorySessions,
    RedisSessions,
    Session,
    SessionCookie,
    SessionMAC,
    is_well_formed,
    memory_key,
    new_handle,
    new_session_id,
    redis_key,
    session_key,
)
from scaleout.core.store import Coalescer, Store, StoreUnavailable, make_redis
from scaleout.core.throttle import Throttle

MAC = SessionMAC(b"k" * 32)
KEYS = Keyspace(b"k" * 32)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def redis_sessions(redis: Redis, idle_ttl: int = 30, absolute_ttl: int = 60, max_per_user: int = 10) -> RedisSessions:
    return RedisSessions(Store(redis), Coalescer(redis), idle_ttl, absolute_ttl, MAC, KEYS, max_per_user)


def session(username: str = "alice", created: float | None = None, uid: str = "uid-alice") -> Session:
    return Session(username, "c", time.time() if created is None else created, uid, new_handle())


def test_session_ids_are_a_slot_tag_then_256_random_bits_and_unique() -> None:
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 4 + 1 + 43 and is_well_formed(i) for i in ids)
    tag = KEYS.tag("uid-alice")
    assert new_session_id(tag).startswith(tag + ".") and new_session_id(tag) != new_session_id(tag)
    body = "x" * 43
    for bad in ("x" * 43, f"abcd{body}", f"ABCD.{body}", f"abc.{body}x", f"abcd.{body[:-1]}=", "../" + "x" * 45):
        assert not is_well_formed(bad), bad
    with pytest.raises(ValueError):
        new_session_id("{}{}")


def test_stores_see_only_a_hash_of_the_id() -> None:
    sid = new_session_id()
    assert sid not in session_key(sid) and sid[5:] not in session_key(sid)
    assert len(session_key(sid)) == len("sess:{abcd}:") + 64


def test_every_multi_key_operation_names_keys_of_one_slot() -> None:
    """What a Redis Cluster requires of a script or a multi-key command (else CROSSSLOT): a login (session,
    index, cap), logout-all and listing (the index and the sessions it names), a refresh spend (token, the
    family's mark, the family index), the denylist check (token and family), the throttle's two counters."""
    for i in range(200):
        uid = f"uid-{i}"
        sid = new_session_id(KEYS.tag(uid))
        keys = [
            session_key(sid),
            *KEYS.user_sessions(uid),
            *KEYS.user_families(uid),
            KEYS.refresh_token(uid, f"jti{i}"),
            KEYS.family_marks(uid) + f"fam{i}",
        ]
        assert len({key_slot(k.encode()) for k in keys}) == 1, keys
        fam = new_handle()
        assert key_slot(denied_token(fam, new_handle()).encode()) == key_slot(denied_family(fam).encode())
        assert len({key_slot(k.encode()) for k in throttle_keys(f"user{i}", f"10.0.{i}.1")}) == 1


def test_user_tags_spread_evenly_over_three_shards_and_depend_on_the_server_key() -> None:
    shard = [0, 0, 0]
    for i in range(3000):
        shard[key_slot(KEYS.user_sessions(f"uid-{i}")[0].encode()) * 3 // 16384] += 1
    assert all(850 < n < 1150 for n in shard), shard
    other = Keyspace(b"o" * 32)
    assert sum(KEYS.tag(f"uid-{i}") == other.tag(f"uid-{i}") for i in range(1000)) < 10


@pytest.mark.anyio
async def test_memory_store_enforces_idle_and_absolute_lifetimes() -> None:
    store = MemorySessions(idle_ttl=60, absolute_ttl=120)
    sid = new_session_id()
    await store.put(sid, session())
    assert (await store.get(sid)).username == "alice"
    assert await store.get(new_session_id()) is None
    old = new_session_id()
    await store.put(old, session("bob", time.time() - 500))  # created long ago
    assert await store.get(old) is None
    await store.delete(sid)
    assert await store.get(sid) is None


@pytest.mark.anyio
async def test_memory_store_is_bounded() -> None:
    store = MemorySessions(idle_ttl=60, absolute_ttl=120, max_entries=10)
    for i in range(50):
        await store.put(new_session_id(), session("u", uid=f"u{i}"))
    result = len(store)
    assert result == 10


@pytest.mark.anyio
async def test_redis_store_round_trip_idle_ttl_and_absolute_lifetime(redis: Redis) -> None:
    store = redis_sessions(redis)
    sid = new_session_id()
    await store.put(sid, session())
    assert (await store.get(sid)).username == "alice"
    assert 0 < await redis.ttl(session_key(sid)) <= 30
    assert await redis.get(f"sess:{sid}") is None  # the raw ID is never a key
    old = new_session_id()
    await store.put(old, session("bob", time.time() - 61))
    assert await store.get(old) is None
    assert await redis.exists(session_key(old)) == 0


@pytest.mark.anyio
async def test_unreachable_redis_is_store_unavailable_quickly() -> None:
    from helpers import free_ports

    (port,), _ = free_ports(1)
    redis = make_redis(Settings(redis_port=port))
    store = redis_sessions(redis)
    start = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await store.get(new_session_id())
    with pytest.raises(StoreUnavailable):
        await Denylist(Store(redis), Coalescer(redis), 60).contains("x" * 22, "f" * 22)
    result = time.monotonic() - start
    assert result < 3


@pytest.mark.anyio
async def test_refresh_tokens_are_single_use_and_reuse_revokes_the_family(redis: Redis) -> None:
    tokens = RefreshTokens(Store(redis), KEYS, ttl=60)
    await tokens.remember("u", "jti-1" * 4)
    assert await tokens.spend("jti-1" * 4, "famA", "u") is RefreshOutcome.ok
    assert await tokens.spend("jti-1" * 4, "famA", "u") is RefreshOutcome.reused
    await tokens.remember("u", "jti-2" * 4)
    assert await tokens.spend("jti-2" * 4, "famA", "u") is RefreshOutcome.revoked
    assert await tokens.spend("never-issued", "famB", "u") is RefreshOutcome.unknown
    await tokens.remember("u", "jti-3" * 4)
    results = await asyncio.gather(*(tokens.spend("jti-3" * 4, "famC", "u") for _ in range(10)))
    assert results.count(RefreshOutcome.ok) == 1


@pytest.mark.anyio
async def test_throttle_counts_attempts_per_account_and_address(redis: Redis) -> None:
    throttle = Throttle(Store(redis), window=30, account_max=3, ip_max=5)
    user = f"user{time.time_ns()}"
    for _ in range(3):
        assert (await throttle.take(user, "10.0.0.1")).allowed
    verdict = await throttle.take(user, "10.0.0.2")
    assert not verdict.allowed and 0 < verdict.retry_after <= 30
    other = f"other{time.time_ns()}"
    assert (await throttle.take(other, "10.0.0.1")).allowed
    assert (await throttle.take(other, "10.0.0.1")).allowed
    assert not (await throttle.take(f"third{time.time_ns()}", "10.0.0.1")).allowed  # the address: 5 attempts
    # A right password gives its attempt back.
    fresh = f"fresh{time.time_ns()}"
    for _ in range(10):
        assert (await throttle.take(fresh, "10.0.0.9")).allowed
        await throttle.refund(fresh, "10.0.0.9")


@pytest.mark.anyio
async def test_throttle_holds_for_attempts_that_arrive_at_the_same_moment(redis: Redis) -> None:
    throttle = Throttle(Store(redis), window=30, account_max=5, ip_max=1000)
    user = f"race{time.time_ns()}"
    verdicts = await asyncio.gather(*(throttle.take(user, f"10.1.0.{i}") for i in range(40)))
    result = [v.allowed for v in verdicts]
    assert result.count(True) == 5


@pytest.mark.anyio
async def test_denylist_entries_expire_with_the_token(redis: Redis) -> None:
    deny = Denylist(Store(redis), Coalescer(redis), access_ttl=5)
    await deny.add("j" * 22, "f" * 22, int(time.time()) + 5)
    assert await deny.contains("j" * 22, "f" * 22)
    assert 0 < await redis.ttl(denied_token("f" * 22, "j" * 22)) <= 6
    assert not await deny.contains("k" * 22, "f" * 22)
    await deny.add_family("g" * 22)  # every token of that login, whatever its jti
    assert await deny.contains("k" * 22, "g" * 22)
    assert 0 < await redis.ttl(denied_family("g" * 22)) <= 6


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
        Settings(auth_mode="basic")
    with pytest.raises(ValueError):
        Settings(session_store="disk")
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


@pytest.mark.anyio
async def test_memory_store_forgets_a_deleted_session_even_after_the_cookie_was_read() -> None:
    store = MemorySessions(idle_ttl=60, absolute_ttl=120)
    reader = SessionCookie("sid", store.key)
    sid = new_session_id()
    await store.put(sid, session())
    header = [(b"cookie", f"sid={sid}".encode())]
    _, key = reader.read(header)
    assert (await store.lookup(key)).username == "alice"
    await store.delete(sid)
    _, key = reader.read(header)
    assert await store.lookup(key) is None


@pytest.mark.anyio
async def test_redis_store_forgets_a_deleted_session_although_its_bytes_were_decoded_before(redis: Redis) -> None:
    store = redis_sessions(redis)
    sid = new_session_id()
    await store.put(sid, session())
    for _ in range(2):  # the second read decodes from the memo
        assert (await store.lookup(redis_key(sid.encode()))).username == "alice"
    await store.delete(sid)
    assert await store.lookup(redis_key(sid.encode())) is None


@pytest.mark.anyio
async def test_memory_store_caps_each_user_and_evicts_their_least_recently_used() -> None:
    store = MemorySessions(idle_ttl=60, absolute_ttl=120, max_per_user=3)
    sids = [new_session_id() for _ in range(4)]
    for sid in sids[:3]:
        await store.put(sid, session())
    other = new_session_id()
    await store.put(other, session("bob", uid="uid-bob"))
    assert await store.get(sids[0]) is not None  # used again: now the most recent of alice's
    await store.put(sids[3], session())  # one too many: alice's least recently used (sids[1]) goes
    assert await store.get(sids[1]) is None
    assert all([await store.get(s) for s in (sids[0], sids[2], sids[3], other)])
    assert len(await store.list("uid-alice")) == 3
    assert len(await store.list("uid-bob")) == 1


@pytest.mark.anyio
async def test_memory_store_at_capacity_evicts_in_constant_time() -> None:
    store = MemorySessions(idle_ttl=60, absolute_ttl=120, max_entries=1000)
    first = new_session_id()
    await store.put(first, session(uid="u-first"))
    for i in range(1500):
        await store.put(new_session_id(), session("u", uid=f"u{i}"))
    assert len(store) == 1000
    assert await store.get(first) is None  # the least recently used of all went first


@pytest.mark.anyio
async def test_session_lists_end_one_and_end_all(redis: Redis) -> None:
    for store in (MemorySessions(60, 120, max_per_user=10), redis_sessions(redis)):
        uid = f"uid{time.time_ns()}"
        made = [(new_session_id(), session(uid=uid)) for _ in range(3)]
        for sid, s in made:
            await store.put(sid, s)
        listed = await store.list(uid)
        assert sorted(i.id for i in listed) == sorted(s.handle for _, s in made)
        assert all(i.id != sid for i in listed for sid, _ in made)  # a handle, never the ID
        assert await store.end(uid, made[0][1].handle)
        assert await store.get(made[0][0]) is None
        assert not await store.end(uid, made[0][1].handle)  # already gone
        assert not await store.end("somebody-else", made[1][1].handle)  # not theirs
        await store.end_all(uid, keep=made[2][1].handle)
        assert await store.get(made[1][0]) is None
        assert await store.get(made[2][0]) is not None
        await store.end_all(uid)
        assert await store.get(made[2][0]) is None
        assert await store.list(uid) == []


@pytest.mark.anyio
async def test_redis_store_caps_each_user_atomically(redis: Redis) -> None:
    store = redis_sessions(redis, max_per_user=3)
    uid = f"cap{time.time_ns()}"
    made = [(new_session_id(), session(uid=uid)) for _ in range(8)]
    await asyncio.gather(*(store.put(sid, s) for sid, s in made))
    alive = [sid for sid, _ in made if await store.get(sid) is not None]
    assert len(alive) == 3
    assert len(await store.list(uid)) == 3


@pytest.mark.anyio
async def test_a_session_written_to_redis_without_the_server_key_is_refused(redis: Redis) -> None:
    store = redis_sessions(redis)
    # Whoever can write the store makes up a session for a chosen ID...
    minted = new_session_id()
    await redis.set(session_key(minted), session("admin").to_json(), ex=30)
    assert await store.get(minted) is None
    # ...or copies a genuine sealed value under a key of their choosing.
    real = new_session_id()
    await store.put(real, session("alice"))
    await redis.set(session_key(minted), await redis.get(session_key(real)), ex=30)
    assert await store.get(minted) is None
    assert (await store.get(real)).username == "alice"
    forged = SessionMAC(b"x" * 32).seal(session_key(minted), session("admin").to_json())
    await redis.set(session_key(minted), forged, ex=30)
    assert await store.get(minted) is None


@pytest.mark.anyio
async def test_refresh_families_are_listed_capped_and_revoked(redis: Redis) -> None:
    tokens = RefreshTokens(Store(redis), KEYS, ttl=60, max_per_user=2)
    uid = f"fam{time.time_ns()}"
    evicted = []
    for i in range(3):
        evicted += await tokens.start_family(uid, f"fam{i}" * 4, f"jti{i}" * 6, {"h": f"h{i}", "created": time.time()})
    assert evicted == ["fam0" * 4]
    assert await tokens.spend("jti0" * 6, "fam0" * 4, uid) is RefreshOutcome.revoked
    listed = await tokens.families(uid)
    assert sorted(f.handle for f in listed) == ["h1", "h2"]
    assert await tokens.revoke(uid, ["fam1" * 4]) == ["fam1" * 4]
    assert await tokens.revoke("other-user", ["fam2" * 4]) == []  # not theirs: untouched
    assert await tokens.spend("jti2" * 6, "fam2" * 4, uid) is RefreshOutcome.ok
