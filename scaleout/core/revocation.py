"""What a logout must reach everywhere in jwt mode, kept in the shared Redis: the access-token denylist and
the refresh-token families (single use, reuse detection, a cap per user, an absolute end)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum

import orjson
from redis.asyncio import Redis

from scaleout.core.nearcache import MISS
from scaleout.core.store import Coalescer, Durability, redis_call


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
        await self.durability.run(self.redis, lambda pipe: pipe.set(f"deny:{jti}", b"1", ex=ttl), revokes=True)

    async def add_family(self, fam: str) -> None:
        # Every access token of the family expires within access_ttl of now (lifetimes are capped).
        ttl = self.access_ttl + 1
        await self.durability.run(self.redis, lambda pipe: pipe.set(f"denyfam:{fam}", b"1", ex=ttl), revokes=True)

    async def contains(self, jti: str, fam: str) -> bool:
        cache = self.coalescer.cache
        if cache is None:
            return bool(await redis_call(lambda: self.coalescer.call("EXISTS", "deny:" + jti, "denyfam:" + fam)))
        entry = (jti, fam)
        found = cache.get(entry)
        if found is not MISS:
            return bool(found)
        # "Not denied" is cached too: EXISTS tracks both keys, present or not, so adding either invalidates it.
        keys = (f"deny:{jti}".encode(), f"denyfam:{fam}".encode())
        token = cache.begin(keys)
        try:
            denied = bool(await redis_call(lambda: self.coalescer.call("EXISTS", *keys)))
        except BaseException:
            cache.done(keys)
            raise
        cache.keep(token, entry, keys, denied)
        return denied


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
  -- The user's index lives as long as its freshest family may: a refresh token's lifetime from now.
  redis.call('EXPIRE', KEYS[3], ARGV[1], 'GT')
  redis.call('EXPIRE', KEYS[4], ARGV[1], 'GT')
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
