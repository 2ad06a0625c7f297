"""The shared Redis: one client per process, and the small pieces of shared state built on it.

Every failure to reach Redis becomes `StoreUnavailable`, which the services turn into 503: a store that is
down never lets anybody in.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

from scaleout.config import Settings
from scaleout.resp import PipelinedConnection


class StoreUnavailable(Exception):
    pass


T = TypeVar("T")


def make_redis(settings: Settings) -> Redis:
    """An async client with a connection pool; hiredis parses replies when installed.

    Short timeouts and no retries of its own (see `redis_call`): when Redis is down a request fails fast
    with 503, and the pool reconnects by itself once Redis is back.
    """
    return Redis.from_url(
        settings.redis_dsn,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        max_connections=256,
    )


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
    turn share one write and one round trip (see `scaleout.resp`).
    """

    def __init__(self, redis: Redis, on_round_trip: Callable[[float], None] | None = None) -> None:
        kw = redis.connection_pool.connection_kwargs
        super().__init__(
            kw.get("host", "127.0.0.1"),
            kw.get("port", 6379),
            kw.get("db", 0),
            kw.get("socket_timeout") or 0.5,
            on_round_trip=on_round_trip,
        )


class Denylist:
    """Revoked access-token IDs (`jti`), each kept until the token would have expired anyway."""

    def __init__(self, redis: Redis, coalescer: Coalescer) -> None:
        self.redis = redis
        self.coalescer = coalescer

    async def add(self, jti: str, exp: int) -> None:
        ttl = max(1, exp - int(time.time()) + 1)
        await redis_call(lambda: self.redis.set(f"deny:{jti}", b"1", ex=ttl))

    async def contains(self, jti: str) -> bool:
        return bool(await redis_call(lambda: self.coalescer.call("EXISTS", "deny:" + jti)))


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
  return 'ok'
elseif state == 'used' then
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[1])
  return 'reused'
end
return 'unknown'
"""


class RefreshTokens:
    """Single-use refresh tokens grouped in families (one family per login)."""

    def __init__(self, redis: Redis, ttl: int) -> None:
        self.redis = redis
        self.ttl = ttl
        self._spend = redis.register_script(_SPEND)

    async def remember(self, jti: str) -> None:
        await redis_call(lambda: self.redis.set(f"rt:{jti}", b"live", ex=self.ttl))

    async def spend(self, jti: str, fam: str) -> RefreshOutcome:
        result = await redis_call(lambda: self._spend(keys=[f"rt:{jti}", f"rf:{fam}"], args=[self.ttl]))
        return RefreshOutcome(result.decode() if isinstance(result, bytes) else result)

    async def revoke_family(self, fam: str) -> None:
        await redis_call(lambda: self.redis.set(f"rf:{fam}", b"1", ex=self.ttl))


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after: int = 0


# Scripts rather than pipelines: a script call is one command, which the client retries on a stale
# connection after a Redis restart (pipelines fail once instead).
_THROTTLE_CHECK = """
local wait = 0
for i, key in ipairs(KEYS) do
  local count = tonumber(redis.call('GET', key) or '0')
  if count >= tonumber(ARGV[i]) then
    local ttl = redis.call('TTL', key)
    if ttl < 1 then ttl = tonumber(ARGV[#ARGV]) end
    if ttl > wait then wait = ttl end
  end
end
return wait
"""

_THROTTLE_RECORD = """
for _, key in ipairs(KEYS) do
  redis.call('INCR', key)
  if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, ARGV[1]) end
end
return 1
"""


class Throttle:
    """Failed logins counted per account and per client address, shared by every process through Redis."""

    def __init__(self, redis: Redis, window: int, account_max: int, ip_max: int) -> None:
        self.redis = redis
        self.window = window
        self.account_max = account_max
        self.ip_max = ip_max
        self._check = redis.register_script(_THROTTLE_CHECK)
        self._record = redis.register_script(_THROTTLE_RECORD)

    @staticmethod
    def _keys(username: str, client_ip: str) -> list[str]:
        return [f"thr:acct:{username}", f"thr:ip:{client_ip}"]

    async def check(self, username: str, client_ip: str) -> Verdict:
        wait = await redis_call(
            lambda: self._check(keys=self._keys(username, client_ip), args=[self.account_max, self.ip_max, self.window])
        )
        return Verdict(allowed=int(wait) == 0, retry_after=int(wait))

    async def record_failure(self, username: str, client_ip: str) -> None:
        await redis_call(lambda: self._record(keys=self._keys(username, client_ip), args=[self.window]))
