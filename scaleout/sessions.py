"""Server-side sessions: in one process's memory, or in the shared Redis (session clustering).

A session ID is 256 bits from `secrets`; stores only ever see its SHA-256, so a leaked store holds no usable
IDs. Both stores enforce an idle timeout and an absolute lifetime themselves.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from hashlib import sha256
from typing import Any, Generic, Protocol, TypeVar

import orjson
from redis.asyncio import Redis

from scaleout.credentials import Malformed, single_cookie_raw
from scaleout.store import Coalescer, redis_call

UNAVAILABLE = "session store unavailable"

_SID = re.compile(r"[A-Za-z0-9_-]{43}")  # token_urlsafe(32): 32 bytes -> 43 characters
_SID_RAW = re.compile(_SID.pattern.encode())


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def is_well_formed(sid: str) -> bool:
    return _SID.fullmatch(sid) is not None


def session_key(sid: str) -> str:
    return redis_key(sid.encode())


def redis_key(raw_sid: bytes) -> str:
    return "sess:" + sha256(raw_sid).hexdigest()


def memory_key(raw_sid: bytes) -> bytes:
    return sha256(raw_sid).digest()


K = TypeVar("K")


class SessionCookie(Generic[K]):
    """Reads the session ID from a request's raw headers, with the key its store files it under.

    A browser sends the same Cookie header with every request, so the outcome of splitting it, checking the
    ID's shape and hashing it is remembered by the header's exact bytes: after a client's first request,
    reading its credential costs one dict lookup. The memo is a pure function of the header bytes and
    holds no session state, so it cannot go stale; whether the session still exists is asked of the store
    every time. Bounded: when full it starts over, so junk headers cannot grow it.
    """

    def __init__(self, name: str, key: Callable[[bytes], K], max_entries: int = 4096) -> None:
        self.name = name.encode()
        self.key = key
        self.max_entries = max_entries
        self._memo: dict[bytes, tuple[str, K]] = {}

    def read(self, headers: Iterable[tuple[bytes, bytes]]) -> tuple[str, K] | None:
        """(session ID, store key), or None without a session cookie; raises Ambiguous or Malformed."""
        cookie: bytes | None = None
        for name, value in headers:
            if name == b"cookie":
                if cookie is not None:  # several Cookie headers: read them all, and remember nothing
                    return self._parse(headers)
                cookie = value
        if cookie is None:
            return None
        found = self._memo.get(cookie)
        if found is None:
            found = self._parse(((b"cookie", cookie),))
            if found is not None:
                if len(self._memo) >= self.max_entries:
                    self._memo.clear()
                self._memo[cookie] = found
        return found

    def _parse(self, headers: Iterable[tuple[bytes, bytes]]) -> tuple[str, K] | None:
        raw = single_cookie_raw(headers, self.name)
        if raw is None:
            return None
        if _SID_RAW.fullmatch(raw) is None:
            raise Malformed(self.name.decode())
        return raw.decode(), self.key(raw)


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
    """One process's sessions: invisible to every other replica, which is the point of the demo.

    Keyed by the raw SHA-256 digest of the ID; each entry is a mutable [session, last seen] pair, so a
    lookup renews the idle timer without allocating.
    """

    def __init__(self, idle_ttl: int, absolute_ttl: int, max_entries: int = 200_000) -> None:
        self.idle_ttl = idle_ttl
        self.absolute_ttl = absolute_ttl
        self.max_entries = max_entries
        self._data: dict[bytes, list[Any]] = {}

    key = staticmethod(memory_key)

    async def get(self, sid: str) -> Session | None:
        return self.lookup(memory_key(sid.encode()))

    def lookup(self, key: bytes) -> Session | None:
        """`get` by store key and without a coroutine: a dict has nothing to wait for, and this runs per request."""
        entry = self._data.get(key)
        if entry is None:
            return None
        session, last_seen = entry
        now = time.time()
        if now - last_seen >= self.idle_ttl or now - session.created >= self.absolute_ttl:
            del self._data[key]
            return None
        entry[1] = now
        return session

    async def put(self, sid: str, session: Session) -> None:
        if len(self._data) >= self.max_entries:
            self._evict_expired()
            if len(self._data) >= self.max_entries:  # still full: drop the oldest rather than grow forever
                self._data.pop(next(iter(self._data)))
        self._data[memory_key(sid.encode())] = [session, time.time()]

    async def delete(self, sid: str) -> None:
        self._data.pop(memory_key(sid.encode()), None)

    def _evict_expired(self) -> None:
        now = time.time()
        for key, (session, last_seen) in list(self._data.items()):
            if now - last_seen >= self.idle_ttl or now - session.created >= self.absolute_ttl:
                del self._data[key]

    def __len__(self) -> int:
        return len(self._data)


class RedisSessions:
    """Sessions in the shared Redis: one round trip per lookup (GETEX reads and renews the idle TTL)."""

    def __init__(
        self, redis: Redis, coalescer: Coalescer, idle_ttl: int, absolute_ttl: int, max_decoded: int = 4096
    ) -> None:
        self.redis = redis
        self.coalescer = coalescer
        self.idle_ttl = idle_ttl
        self.absolute_ttl = absolute_ttl
        self.max_decoded = max_decoded
        # A session's stored bytes never change after login, so decoding them is remembered by those bytes
        # (a pure function: nothing here says a session exists; only Redis's reply does).
        self._decoded: dict[bytes, Session] = {}

    key = staticmethod(redis_key)

    async def get(self, sid: str) -> Session | None:
        return await self.lookup(session_key(sid))

    async def lookup(self, key: str) -> Session | None:
        raw = await redis_call(lambda: self.coalescer.call("GETEX", key, "EX", self.idle_ttl), UNAVAILABLE)
        if raw is None:
            return None
        session = self._decoded.get(raw)  # type: ignore[call-overload]
        if session is None:
            session = Session.from_json(raw)  # type: ignore[arg-type]
            if len(self._decoded) >= self.max_decoded:
                self._decoded.clear()
            self._decoded[raw] = session  # type: ignore[index]
        if time.time() - session.created >= self.absolute_ttl:
            await redis_call(lambda: self.redis.delete(key), UNAVAILABLE)
            return None
        return session

    async def put(self, sid: str, session: Session) -> None:
        await redis_call(lambda: self.redis.set(session_key(sid), session.to_json(), ex=self.idle_ttl), UNAVAILABLE)

    async def delete(self, sid: str) -> None:
        await redis_call(lambda: self.redis.delete(session_key(sid)), UNAVAILABLE)
