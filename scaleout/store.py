"""The shared Redis: one client per process, and the small pieces of shared state built on it.

Every failure to reach Redis becomes `StoreUnavailable`, which the services turn into 503: a store that is
down never lets anybody in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from scaleout.config import Settings


class StoreUnavailable(Exception):
    pass


def make_redis(settings: Settings) -> Redis:
    """An async client with a connection pool; hiredis parses replies when installed.

    No retries and short timeouts: when Redis is down a request should fail fast with 503, and the pool
    reconnects by itself once Redis is back.
    """
    return Redis.from_url(
        settings.redis_dsn,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
        max_connections=256,
    )


def _unavailable(exc: Exception) -> StoreUnavailable:
    return StoreUnavailable("shared store unavailable")


class Denylist:
    """Revoked access-token IDs (`jti`), each kept until the token would have expired anyway."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def add(self, jti: str, exp: int) -> None:
        ttl = max(1, exp - int(time.time()) + 1)
        try:
            await self.redis.set(f"deny:{jti}", b"1", ex=ttl)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc

    async def contains(self, jti: str) -> bool:
        try:
            return bool(await self.redis.exists(f"deny:{jti}"))
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc


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
        try:
            await self.redis.set(f"rt:{jti}", b"live", ex=self.ttl)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc

    async def spend(self, jti: str, fam: str) -> RefreshOutcome:
        try:
            result = await self._spend(keys=[f"rt:{jti}", f"rf:{fam}"], args=[self.ttl])
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        return RefreshOutcome(result.decode() if isinstance(result, bytes) else result)

    async def revoke_family(self, fam: str) -> None:
        try:
            await self.redis.set(f"rf:{fam}", b"1", ex=self.ttl)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after: int = 0


class Throttle:
    """Failed logins counted per account and per client address, shared by every process through Redis."""

    def __init__(self, redis: Redis, window: int, account_max: int, ip_max: int) -> None:
        self.redis = redis
        self.window = window
        self.limits = {"acct": account_max, "ip": ip_max}

    def _keys(self, username: str, client_ip: str) -> dict[str, str]:
        return {"acct": f"thr:acct:{username}", "ip": f"thr:ip:{client_ip}"}

    async def check(self, username: str, client_ip: str) -> Verdict:
        keys = self._keys(username, client_ip)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys.values():
                    pipe.get(key)
                    pipe.ttl(key)
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
        retry_after = 0
        for i, kind in enumerate(keys):
            count, ttl = replies[2 * i], replies[2 * i + 1]
            if count is not None and int(count) >= self.limits[kind]:
                retry_after = max(retry_after, ttl if ttl and ttl > 0 else self.window)
        return Verdict(allowed=retry_after == 0, retry_after=retry_after)

    async def record_failure(self, username: str, client_ip: str) -> None:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for key in self._keys(username, client_ip).values():
                    pipe.incr(key)
                    pipe.expire(key, self.window, nx=True)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from exc
