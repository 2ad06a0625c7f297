"""What a logout must reach everywhere in jwt mode, kept in the shared Redis: the access-token denylist and
the refresh-token families (single use, reuse detection, a cap per user, an absolute end)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from scaleout.core.keyspace import Keyspace, denied_family, denied_token
from scaleout.core.nearcache import MISS
from scaleout.core.store import Reads, Store, redis_call


class Denylist:
    """Revoked access tokens, by their own `jti` or by their login (`fam`), each kept until it expires anyway.

    One `EXISTS` of both keys per request: a logout (or a revoked session) ends every access token of that
    login at once, not only the one presented.
    """

    def __init__(self, store: Store, coalescer: Reads, access_ttl: int) -> None:
        self.store = store
        self.coalescer = coalescer
        self.access_ttl = access_ttl

    async def add(self, jti: str, fam: str, exp: int) -> None:
        ttl = max(1, exp - int(time.time()) + 1)
        key = denied_token(fam, jti)
        await self.store.run(key, lambda pipe: pipe.set(key, b"1", ex=ttl), durable=True, revokes=True)

    async def add_family(self, fam: str) -> None:
        # Every access token of the family expires within access_ttl of now (lifetimes are capped).
        ttl = self.access_ttl + 1
        key = denied_family(fam)
        await self.store.run(key, lambda pipe: pipe.set(key, b"1", ex=ttl), durable=True, revokes=True)

    async def contains(self, jti: str, fam: str) -> bool:
        cache = self.coalescer.cache_for(denied_family(fam))
        if cache is None:
            return bool(
                await redis_call(lambda: self.coalescer.call("EXISTS", denied_token(fam, jti), denied_family(fam)))
            )
        entry = (jti, fam)
        found = cache.get(entry)
        if found is not MISS:
            return bool(found)
        # "Not denied" is cached too: EXISTS tracks both keys, present or not, so adding either invalidates it.
        keys = (denied_token(fam, jti).encode(), denied_family(fam).encode())
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
    redis.call('SET', ARGV[6] .. fam, '1', 'EX', ARGV[1])
    redis.call('ZREM', KEYS[2], fam)
    redis.call('HDEL', KEYS[3], fam)
    table.insert(revoked, fam)
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[1])
return revoked
"""

# Revoke families of one user (ARGV[1] is the TTL of the mark, ARGV[3] the prefix of the user's marks):
# ARGV[4..] names them; none named means all of them but ARGV[2].
_REVOKE = """
local fams = {}
if #ARGV > 3 then
  for i = 4, #ARGV do
    if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then table.insert(fams, ARGV[i]) end
  end
else
  for _, fam in ipairs(redis.call('HKEYS', KEYS[2])) do
    if fam ~= ARGV[2] then table.insert(fams, fam) end
  end
end
for _, fam in ipairs(fams) do
  redis.call('SET', ARGV[3] .. fam, '1', 'EX', ARGV[1])
  redis.call('ZREM', KEYS[1], fam)
  redis.call('HDEL', KEYS[2], fam)
end
return fams
"""


@dataclass(frozen=True, slots=True)
class Family:
    fam: str
    handle: str
    created: float
    last_seen: float
    user_agent: str
    ip: str


class RefreshTokens:
    """Single-use refresh tokens grouped in families (one family per login), indexed per user. Every key of
    a user's families is in the user's slot (`keyspace`): each step below is one script on one shard."""

    def __init__(self, store: Store, keys: Keyspace, ttl: int, max_per_user: int = 10) -> None:
        self.store = store
        self.keys = keys
        self.ttl = ttl
        self.max_per_user = max_per_user
        self._spend = store.script(_SPEND)
        self._start = store.script(_START)
        self._revoke = store.script(_REVOKE)

    async def start_family(self, uid: str, fam: str, jti: str, info: dict[str, object]) -> list[str]:
        """Remember a login's first refresh token; returns the families the per-user cap revoked."""
        zset, meta = self.keys.user_families(uid)
        token = self.keys.refresh_token(uid, jti)
        args: list[str | int | float | bytes] = [
            self.ttl,
            time.time(),
            fam,
            orjson.dumps(info),
            self.max_per_user,
            self.keys.family_marks(uid),
        ]
        (revoked,) = await self.store.run(
            token, lambda pipe: self._start(keys=[token, zset, meta], args=args, client=pipe), durable=True
        )
        return [f.decode() if isinstance(f, bytes) else str(f) for f in revoked]

    async def remember(self, uid: str, jti: str) -> None:
        token = self.keys.refresh_token(uid, jti)
        await self.store.run(token, lambda pipe: pipe.set(token, b"live", ex=self.ttl), durable=True)

    async def spend(self, jti: str, fam: str, uid: str) -> RefreshOutcome:
        zset, meta = self.keys.user_families(uid)
        token = self.keys.refresh_token(uid, jti)
        keys = [token, self.keys.family_marks(uid) + fam, zset, meta]
        args: list[str | int | float | bytes] = [self.ttl, time.time(), fam]
        (result,) = await self.store.run(
            token, lambda pipe: self._spend(keys=keys, args=args, client=pipe), durable=True
        )
        return RefreshOutcome(result.decode() if isinstance(result, bytes) else result)

    async def revoke_family(self, uid: str, fam: str) -> None:
        """Mark a family revoked whether or not its user's index still names it."""
        mark = self.keys.family_marks(uid) + fam
        await self.store.run(mark, lambda pipe: pipe.set(mark, b"1", ex=self.ttl), durable=True)

    async def revoke(self, uid: str, fams: list[str], keep: str = "") -> list[str]:
        """Revoke the named families of `uid` (those that are its own), or all but `keep` when none named."""
        zset, meta = self.keys.user_families(uid)
        args: list[str | int | float | bytes] = [self.ttl, keep, self.keys.family_marks(uid), *fams]
        (done,) = await self.store.run(
            zset, lambda pipe: self._revoke(keys=[zset, meta], args=args, client=pipe), durable=True
        )
        return [f.decode() if isinstance(f, bytes) else str(f) for f in done]

    async def family_created(self, uid: str, fam: str) -> float | None:
        """When the login that started `fam` happened; None when the family is not (or no longer) indexed."""
        _, meta = self.keys.user_families(uid)
        (raw,) = await self.store.run(meta, lambda pipe: pipe.hget(meta, fam))
        if raw is None:
            return None
        return float(orjson.loads(raw).get("created", 0))

    async def families(self, uid: str) -> list[Family]:
        zset, meta = self.keys.user_families(uid)

        async def read(pipe: Any) -> None:
            pipe.zrange(zset, 0, -1, withscores=True)
            pipe.hgetall(meta)

        scores, infos = await self.store.run(zset, read, transaction=True)
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
