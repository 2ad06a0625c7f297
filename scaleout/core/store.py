"""The shared Redis: one client per process, and the small pieces of shared state built on it.

Every failure to reach Redis becomes `StoreUnavailable`, which the services turn into 503: a store that is
down never lets anybody in.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

from scaleout.core.config import Settings
from scaleout.core.resp import PipelinedConnection


class StoreUnavailable(Exception):
    pass


T = TypeVar("T")


def make_redis(settings: Settings) -> Redis:
    """An async client with a connection pool; hiredis parses replies when installed.

    Short timeouts and no retries of its own (see `redis_call`): when Redis is down a request fails fast
    with 503, and the pool reconnects by itself once Redis is back. Every connection authenticates as the
    cluster's ACL user: the cluster's Redis refuses anonymous clients.
    """
    password = settings.redis_password()
    common: dict[str, Any] = {
        "username": settings.redis_username if password else None,
        "password": password,
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }
    if settings.sentinel:
        # The primary is whichever the Sentinels name now: found on connect, found again after a
        # connection breaks or a demoted primary answers READONLY (redis-py's Sentinel pool does both).
        sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py's Sentinel has no annotations
            settings.sentinel_hosts,
            sentinel_kwargs={
                "password": password,
                "socket_timeout": settings.redis_timeout,
                "socket_connect_timeout": settings.redis_timeout,
            },
            **common,
        )
        primary: Redis = sentinel.master_for(settings.sentinel_master, max_connections=256)
        return primary
    return Redis.from_url(settings.redis_dsn, max_connections=256, **common)


class NotReplicated(StoreUnavailable):
    """A write no replica acknowledged in time: it may not survive a failover, so it is not confirmed."""


class Durability:
    """Writes the user is told about (a login, a logout, a revocation, a spent refresh token) are confirmed
    only once `replicas` replicas have them (`WAIT` on the same connection, right after the write)."""

    def __init__(self, replicas: int = 0, timeout_ms: int = 500) -> None:
        self.replicas = replicas
        self.timeout_ms = timeout_ms

    @classmethod
    def of(cls, settings: Settings) -> Durability:
        return cls(settings.redis_wait_replicas if settings.sentinel else 0, settings.redis_wait_ms)

    async def run(
        self, redis: Redis, build: Callable[[Any], Awaitable[object]], what: str = "shared store unavailable"
    ) -> list[Any]:
        """Queue commands on a pipeline (one connection), then WAIT; the commands' replies."""

        async def op() -> list[Any]:
            async with redis.pipeline(transaction=False) as pipe:
                await build(pipe)
                if self.replicas:
                    pipe.wait(self.replicas, self.timeout_ms)
                results: list[Any] = await pipe.execute()
            if self.replicas:
                if int(results[-1]) < self.replicas:
                    raise NotReplicated(f"{what}: no replica confirmed the write")
                return results[:-1]
            return results

        return await redis_call(op, what)


async def redis_call(op: Callable[[], Awaitable[T]], what: str = "shared store unavailable") -> T:
    """Run one Redis operation; a dead connection is retried once, any other failure is StoreUnavailable.

    After a Redis restart every pooled connection is dead, and redis-py raises on the first use of each
    instead of reconnecting; one retry on a fresh connection heals that without failing a request.
    """
    try:
        try:
            return await op()
        except RedisConnectionError:
            return await op()
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(what) from exc


class Coalescer(PipelinedConnection):
    """The per-request reads of one process, pipelined on one lean connection to the client's Redis.

    Under load a replica has many requests waiting on Redis at once; commands issued in one event-loop
    turn share one write and one round trip (see `scaleout.core.resp`).
    """

    def __init__(self, redis: Redis, on_round_trip: Callable[[float], None] | None = None) -> None:
        pool = redis.connection_pool
        kw = pool.connection_kwargs
        super().__init__(
            kw.get("host", "127.0.0.1"),
            kw.get("port", 6379),
            kw.get("db", 0),
            kw.get("socket_timeout") or 0.5,
            on_round_trip=on_round_trip,
            username=kw.get("username"),
            password=kw.get("password"),
            # Behind Sentinels, every (re)connection asks them where the primary is now.
            locate=pool.get_master_address if isinstance(pool, SentinelConnectionPool) else None,
        )


class Denylist:
    """Revoked access tokens, by their own `jti` or by their login (`fam`), each kept until it expires anyway.

    One `EXISTS` of both keys per request: a logout (or a revoked session) ends every access token of that
    login at once, not only the one presented.
    """

    def __init__(
        self, redis: Redis, coalescer: Coalescer, access_ttl: int, durability: Durability | None = None
    ) -> None:
        self.redis = redis
        self.coalescer = coalescer
        self.access_ttl = access_ttl
        self.durability = durability or Durability()

    async def add(self, jti: str, exp: int) -> None:
        ttl = max(1, exp - int(time.time()) + 1)
        await self.durability.run(self.redis, lambda pipe: pipe.set(f"deny:{jti}", b"1", ex=ttl))

    async def add_family(self, fam: str) -> None:
        # Every access token of the family expires within access_ttl of now (lifetimes are capped).
        ttl = self.access_ttl + 1
        await self.durability.run(self.redis, lambda pipe: pipe.set(f"denyfam:{fam}", b"1", ex=ttl))

    async def contains(self, jti: str, fam: str) -> bool:
        return bool(await redis_call(lambda: self.coalescer.call("EXISTS", "deny:" + jti, "denyfam:" + fam)))


class RefreshOutcome(StrEnum):
    ok = "ok"
    reused = "reused"  # a spent token came back: its whole family is now revoked
    revoked = "revoked"
    unknown = "unknown"


# One atomic step, so two concurrent refreshes with one token cannot both succeed.
_SPEND = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 'revoked' end
local state = redis.call('GET', KEYS[1])
if state == 'live' then
  redis.call('SET', KEYS[1], 'used', 'KEEPTTL')
  redis.call('ZADD', KEYS[3], 'XX', ARGV[2], ARGV[3])
  return 'ok'
elseif state == 'used' then
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('HDEL', KEYS[4], ARGV[3])
  return 'reused'
end
return 'unknown'
"""

# A new family (a login): indexed under its user; beyond the cap the least recently used are revoked.
_START = """
redis.call('SET', KEYS[1], 'live', 'EX', ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
local revoked = {}
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if extra > 0 then
  for _, fam in ipairs(redis.call('ZRANGE', KEYS[2], 0, extra - 1)) do
    redis.call('SET', 'rf:' .. fam, '1', 'EX', ARGV[1])
    redis.call('ZREM', KEYS[2], fam)
    redis.call('HDEL', KEYS[3], fam)
    table.insert(revoked, fam)
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[1])
return revoked
"""

# Revoke families of one user (ARGV[1] is the TTL of the mark): ARGV[3..] names them; none named means
# all of them but ARGV[2].
_REVOKE = """
local fams = {}
if #ARGV > 2 then
  for i = 3, #ARGV do
    if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then table.insert(fams, ARGV[i]) end
  end
else
  for _, fam in ipairs(redis.call('HKEYS', KEYS[2])) do
    if fam ~= ARGV[2] then table.insert(fams, fam) end
  end
end
for _, fam in ipairs(fams) do
  redis.call('SET', 'rf:' .. fam, '1', 'EX', ARGV[1])
  redis.call('ZREM', KEYS[1], fam)
  redis.call('HDEL', KEYS[2], fam)
end
return fams
"""


def family_keys(uid: str) -> tuple[str, str]:
    """A user's refresh families: a sorted set fam -> last use, and a hash fam -> what the user may see."""
    return f"user:{{{uid}}}:fams", f"user:{{{uid}}}:faminfo"


@dataclass(frozen=True, slots=True)
class Family:
    fam: str
    handle: str
    created: float
    last_seen: float
    user_agent: str
    ip: str


class RefreshTokens:
    """Single-use refresh tokens grouped in families (one family per login), indexed per user."""

    def __init__(self, redis: Redis, ttl: int, max_per_user: int = 10, durability: Durability | None = None) -> None:
        self.redis = redis
        self.ttl = ttl
        self.max_per_user = max_per_user
        self.durability = durability or Durability()
        self._spend = redis.register_script(_SPEND)
        self._start = redis.register_script(_START)
        self._revoke = redis.register_script(_REVOKE)

    async def start_family(self, uid: str, fam: str, jti: str, info: dict[str, object]) -> list[str]:
        """Remember a login's first refresh token; returns the families the per-user cap revoked."""
        zset, meta = family_keys(uid)
        args: list[str | int | float | bytes] = [self.ttl, time.time(), fam, orjson.dumps(info), self.max_per_user]
        (revoked,) = await self.durability.run(
            self.redis, lambda pipe: self._start(keys=[f"rt:{jti}", zset, meta], args=args, client=pipe)
        )
        return [f.decode() if isinstance(f, bytes) else str(f) for f in revoked]

    async def remember(self, jti: str) -> None:
        await self.durability.run(self.redis, lambda pipe: pipe.set(f"rt:{jti}", b"live", ex=self.ttl))

    async def spend(self, jti: str, fam: str, uid: str) -> RefreshOutcome:
        zset, meta = family_keys(uid)
        keys = [f"rt:{jti}", f"rf:{fam}", zset, meta]
        args: list[str | int | float | bytes] = [self.ttl, time.time(), fam]
        (result,) = await self.durability.run(self.redis, lambda pipe: self._spend(keys=keys, args=args, client=pipe))
        return RefreshOutcome(result.decode() if isinstance(result, bytes) else result)

    async def revoke_family(self, fam: str) -> None:
        """Mark a family revoked whether or not its user's index still names it."""
        await self.durability.run(self.redis, lambda pipe: pipe.set(f"rf:{fam}", b"1", ex=self.ttl))

    async def revoke(self, uid: str, fams: list[str], keep: str = "") -> list[str]:
        """Revoke the named families of `uid` (those that are its own), or all but `keep` when none named."""
        zset, meta = family_keys(uid)
        args: list[str | int | float | bytes] = [self.ttl, keep, *fams]
        (done,) = await self.durability.run(
            self.redis, lambda pipe: self._revoke(keys=[zset, meta], args=args, client=pipe)
        )
        return [f.decode() if isinstance(f, bytes) else str(f) for f in done]

    async def family_created(self, uid: str, fam: str) -> float | None:
        """When the login that started `fam` happened; None when the family is not (or no longer) indexed."""
        _, meta = family_keys(uid)
        raw = await redis_call(lambda: self.redis.hget(meta, fam))
        if raw is None:
            return None
        return float(orjson.loads(raw).get("created", 0))

    async def families(self, uid: str) -> list[Family]:
        zset, meta = family_keys(uid)

        async def read() -> tuple[list[tuple[bytes, float]], dict[bytes, bytes]]:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrange(zset, 0, -1, withscores=True)
                pipe.hgetall(meta)
                scores, infos = await pipe.execute()
            return scores, infos

        scores, infos = await redis_call(read)
        now = time.time()
        out = []
        for fam_raw, score in scores:
            raw = infos.get(fam_raw)
            if raw is None:
                continue
            info = orjson.loads(raw)
            if now - float(score) >= self.ttl:  # not refreshed for a refresh token's lifetime: over
                continue
            out.append(
                Family(
                    fam_raw.decode(),
                    str(info.get("h", "")),
                    float(info.get("created", 0)),
                    float(score),
                    str(info.get("a", "")),
                    str(info.get("p", "")),
                )
            )
        return out


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after: int = 0


# One atomic step: over a limit, the wait; else the attempt is counted before the password is checked, so
# attempts that arrive at the same moment cannot all slip under the limit.
_THROTTLE_TAKE = """
local wait = 0
for i, key in ipairs(KEYS) do
  local count = tonumber(redis.call('GET', key) or '0')
  if count >= tonumber(ARGV[i]) then
    local ttl = redis.call('TTL', key)
    if ttl < 1 then ttl = tonumber(ARGV[#ARGV]) end
    if ttl > wait then wait = ttl end
  end
end
if wait > 0 then return wait end
for _, key in ipairs(KEYS) do
  redis.call('INCR', key)
  if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, ARGV[#ARGV]) end
end
return 0
"""

_THROTTLE_REFUND = """
for _, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
end
return 1
"""


class Throttle:
    """Login attempts counted per account and per client address, shared by every process through Redis.

    `take` counts an attempt before it is verified; `refund` gives it back when the password was right.
    """

    def __init__(self, redis: Redis, window: int, account_max: int, ip_max: int) -> None:
        self.redis = redis
        self.window = window
        self.account_max = account_max
        self.ip_max = ip_max
        self._take = redis.register_script(_THROTTLE_TAKE)
        self._refund = redis.register_script(_THROTTLE_REFUND)

    @staticmethod
    def _keys(username: str, client_ip: str) -> list[str]:
        return [f"thr:acct:{username}", f"thr:ip:{client_ip}"]

    async def take(self, username: str, client_ip: str) -> Verdict:
        wait = await redis_call(
            lambda: self._take(keys=self._keys(username, client_ip), args=[self.account_max, self.ip_max, self.window])
        )
        return Verdict(allowed=int(wait) == 0, retry_after=int(wait))

    async def refund(self, username: str, client_ip: str) -> None:
        await redis_call(lambda: self._refund(keys=self._keys(username, client_ip)))
