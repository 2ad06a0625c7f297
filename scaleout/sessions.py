"""Server-side sessions: in one process's memory, or in the shared Redis (session clustering).

A session ID is 256 bits from `secrets`; stores only ever see its SHA-256, so a leaked store holds no usable
IDs. Both stores enforce an idle timeout and an absolute lifetime themselves.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import Protocol

import orjson
from redis.asyncio import Redis

from scaleout.store import Coalescer, redis_call

UNAVAILABLE = "session store unavailable"

_SID = re.compile(r"^[A-Za-z0-9_-]{43}$")  # token_urlsafe(32): 32 bytes -> 43 characters


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def is_well_formed(sid: str) -> bool:
    return _SID.match(sid) is not None


def session_key(sid: str) -> str:
    return "sess:" + hashlib.sha256(sid.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    username: str
    csrf: str
    created: float

    def to_json(self) -> bytes:
        return orjson.dumps({"u": self.username, "c": self.csrf, "t": self.created})

    @classmethod
    def from_json(cls, raw: bytes | str) -> Session:
        d = orjson.loads(raw)
        return cls(username=d["u"], csrf=d["c"], created=d["t"])


class SessionStore(Protocol):
    async def get(self, sid: str) -> Session | None: ...
    async def put(self, sid: str, session: Session) -> None: ...
    async def delete(self, sid: str) -> None: ...


class MemorySessions:
    """One process's sessions: invisible to every other replica, which is the point of the demo."""

    def __init__(self, idle_ttl: int, absolute_ttl: int, max_entries: int = 200_000) -> None:
        self.idle_ttl = idle_ttl
        self.absolute_ttl = absolute_ttl
        self.max_entries = max_entries
        self._data: dict[str, tuple[Session, float]] = {}  # key -> (session, last seen)

    async def get(self, sid: str) -> Session | None:
        key = session_key(sid)
        entry = self._data.get(key)
        if entry is None:
            return None
        session, last_seen = entry
        now = time.time()
        if now - last_seen >= self.idle_ttl or now - session.created >= self.absolute_ttl:
            del self._data[key]
            return None
        self._data[key] = (session, now)
        return session

    async def put(self, sid: str, session: Session) -> None:
        if len(self._data) >= self.max_entries:
            self._evict_expired()
            if len(self._data) >= self.max_entries:  # still full: drop the oldest rather than grow forever
                self._data.pop(next(iter(self._data)))
        self._data[session_key(sid)] = (session, time.time())

    async def delete(self, sid: str) -> None:
        self._data.pop(session_key(sid), None)

    def _evict_expired(self) -> None:
        now = time.time()
        for key, (session, last_seen) in list(self._data.items()):
            if now - last_seen >= self.idle_ttl or now - session.created >= self.absolute_ttl:
                del self._data[key]

    def __len__(self) -> int:
        return len(self._data)


class RedisSessions:
    """Sessions in the shared Redis: one round trip per lookup (GETEX reads and renews the idle TTL)."""

    def __init__(self, redis: Redis, coalescer: Coalescer, idle_ttl: int, absolute_ttl: int) -> None:
        self.redis = redis
        self.coalescer = coalescer
        self.idle_ttl = idle_ttl
        self.absolute_ttl = absolute_ttl

    async def get(self, sid: str) -> Session | None:
        key = session_key(sid)
        raw = await redis_call(lambda: self.coalescer.call("GETEX", key, "EX", self.idle_ttl), UNAVAILABLE)
        if raw is None:
            return None
        session = Session.from_json(raw)
        if time.time() - session.created >= self.absolute_ttl:
            await self.delete(sid)
            return None
        return session

    async def put(self, sid: str, session: Session) -> None:
        await redis_call(lambda: self.redis.set(session_key(sid), session.to_json(), ex=self.idle_ttl), UNAVAILABLE)

    async def delete(self, sid: str) -> None:
        await redis_call(lambda: self.redis.delete(session_key(sid)), UNAVAILABLE)
