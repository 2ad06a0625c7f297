"""Server-side sessions: in one process's memory, or in the shared Redis (session clustering).

A session ID is 256 bits from `secrets` after its user's slot tag (`keyspace`: where a Redis Cluster keeps
it); stores only ever see its SHA-256, so a leaked store holds no usable IDs. Both stores enforce an idle
timeout and an absolute lifetime themselves, keep a per-user index (the sessions a user can list and end,
by a public handle that is never the ID) and cap each user's sessions.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from hashlib import sha256
from typing import Any, Generic, Protocol, TypeVar

import orjson

from scaleout.core import keyspace
from scaleout.core.config import Settings
from scaleout.core.credentials import Malformed, single_cookie_raw
from scaleout.core.keyspace import TAG, Keyspace
from scaleout.core.nearcache import MISS, NearCache
from scaleout.core.store import Reads, Store, redis_call

UNAVAILABLE = "session store unavailable"

# The slot tag, a dot, then token_urlsafe(32): 32 bytes -> 43 characters.
_SID = re.compile(r"[0-9a-f]{4}\.[A-Za-z0-9_-]{43}")
_SID_RAW = re.compile(_SID.pattern.encode())
HANDLE = re.compile(r"[A-Za-z0-9_-]{16}")  # public session handles: token_urlsafe(12)


def new_session_id(tag: str | None = None) -> str:
    """A new session ID for a user with this slot tag (`Keyspace.tag`); a random tag without one (a store
    that needs no slot, or a test)."""
    if tag is None:
        tag = secrets.token_hex(2)
    elif TAG.fullmatch(tag) is None:
        raise ValueError("a slot tag is four lowercase hex digits")
    return f"{tag}.{secrets.token_urlsafe(32)}"


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def new_handle() -> str:
    return secrets.token_urlsafe(12)


def is_well_formed(sid: str) -> bool:
    return _SID.fullmatch(sid) is not None


def session_key(sid: str) -> str:
    return redis_key(sid.encode())


def redis_key(raw_sid: bytes) -> str:
    return keyspace.session_key(raw_sid)


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
    uid: str = ""
    handle: str = ""
    user_agent: str = ""
    ip: str = ""

    def as_dict(self) -> dict[str, str | float]:
        """The stored shape (short keys: it is stored once per session, in Redis or sent to every peer)."""
        return {
            "u": self.username,
            "c": self.csrf,
            "t": self.created,
            "i": self.uid,
            "h": self.handle,
            "a": self.user_agent,
            "p": self.ip,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.as_dict())

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> Session:
        """The one decoder of a stored session, whoever stored it; a value of the wrong shape is a KeyError,
        ValueError or TypeError, never a half-built session."""
        created = d["t"]
        if not isinstance(created, int | float):
            raise TypeError("created must be a number")
        return cls(
            str(d["u"]),
            str(d["c"]),
            float(created),
            str(d.get("i", "")),
            str(d.get("h", "")),
            str(d.get("a", "")),
            str(d.get("p", "")),
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Session:
        d = orjson.loads(raw)
        if not isinstance(d, dict):
            raise TypeError("a stored session is a JSON object")
        return cls.from_dict(d)


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A login as its user may see it (`GET /api/sessions`): a public handle, never a session ID or token.
    Stores list them; the authenticator marks the caller's own (`current`)."""

    id: str
    created: float
    last_seen: float
    user_agent: str
    ip: str
    current: bool = False

    def as_json(self) -> dict[str, str | int | bool]:
        return {
            "id": self.id,
            "created": int(self.created),
            "last_seen": int(self.last_seen),
            "current": self.current,
            "user_agent": self.user_agent,
            "ip": self.ip,
        }


class SessionMAC:
    """Seals a stored session value under a server key and the store key it lives at.

    Whoever can write the store still cannot mint a session: a value they make up has no valid tag, and a
    genuine value copied under another key (a session ID they chose) fails because the key is sealed in.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the session MAC key must be at least 32 bytes")
        self._key = key

    def _tag(self, store_key: str, value: bytes) -> bytes:
        return hmac.new(self._key, store_key.encode() + b"\0" + value, sha256).hexdigest().encode()

    def seal(self, store_key: str, value: bytes) -> bytes:
        return value + b"|" + self._tag(store_key, value)

    def open(self, store_key: str, sealed: bytes) -> bytes | None:
        value, sep, tag = sealed.rpartition(b"|")
        if not sep or not hmac.compare_digest(tag, self._tag(store_key, value)):
            return None
        return value


class SessionStore(Protocol):
    """Where sessions live, whichever store it is (this process's memory, every replica's memory kept in
    step, the shared Redis): one interface, chosen once at start-up. Keys are the store's own form of a
    session ID (`key`), computed once per distinct Cookie header by `SessionCookie`."""

    @staticmethod
    def key(raw_sid: bytes) -> Any: ...

    async def lookup(self, key: Any) -> Session | None:
        """The session at a store key, its idle timer renewed; None when absent or expired."""
        ...

    def touch(self, session: Session) -> None:
        """After a lookup: renew what the lookup itself did not (the Redis index's `last_seen`)."""
        ...

    async def put(self, sid: str, session: Session) -> None: ...

    async def delete(self, sid: str) -> None: ...

    async def list(self, uid: str) -> list[SessionInfo]: ...

    async def end(self, uid: str, handle: str) -> bool: ...

    async def end_all(self, uid: str, keep: str | None = None) -> None: ...


def _expired(session: Session, last_seen: float, now: float, idle_ttl: int, absolute_ttl: int) -> bool:
    return now - last_seen >= idle_ttl or now - session.created >= absolute_ttl


class _Entry:
    """A stored session and when it was last seen (renewed in place by every lookup)."""

    __slots__ = ("seen", "session")

    def __init__(self, session: Session, seen: float) -> None:
        self.session = session
        self.seen = seen


class MemorySessions:
    """One process's sessions: invisible to every other replica, which is the point of the demo.

    Keyed by the raw SHA-256 digest of the ID, in least-recently-used order, so that eviction at capacity
    is O(1). Each entry is a mutable (session, last seen) slot object: a lookup renews the idle timer in place.
    A per-user index caps each user's sessions, so one user's logins cannot evict everybody else's.
    """

    def __init__(self, idle_ttl: int, absolute_ttl: int, max_per_user: int = 10, max_entries: int = 200_000) -> None:
        self.idle_ttl = idle_ttl
        self.absolute_ttl = absolute_ttl
        self.max_per_user = max_per_user
        self.max_entries = max_entries
        self._data: OrderedDict[bytes, _Entry] = OrderedDict()
        self._by_user: dict[str, dict[str, bytes]] = {}  # uid -> handle -> key

    @staticmethod
    def key(raw_sid: bytes) -> bytes:
        return memory_key(raw_sid)

    async def get(self, sid: str) -> Session | None:
        return await self.lookup(memory_key(sid.encode()))

    async def lookup(self, key: bytes) -> Session | None:
        """The session at a store key, its idle timer renewed (None when absent or expired)."""
        entry = self._data.get(key)
        if entry is None:
            return None
        now = time.time()
        if _expired(entry.session, entry.seen, now, self.idle_ttl, self.absolute_ttl):
            self.drop(key)
            return None
        entry.seen = now
        self._data.move_to_end(key)
        return entry.session

    async def put(self, sid: str, session: Session) -> None:
        self.keep(memory_key(sid.encode()), session)

    def keep(self, key: bytes, session: Session) -> None:
        """Store a session at its store key (a login here, or one a peer replicated); beyond the user's cap
        or the store's, the least recently used make room."""
        mine = self._by_user.setdefault(session.uid, {})
        while len(mine) >= self.max_per_user:  # the user's least recently used session makes room
            self.drop(min(mine.values(), key=lambda k: self._data[k].seen))
        if len(self._data) >= self.max_entries:
            self.drop(next(iter(self._data)))  # the least recently used of all
        self._data[key] = _Entry(session, time.time())
        self._by_user.setdefault(session.uid, {})[session.handle] = key

    async def delete(self, sid: str) -> None:
        self.drop(memory_key(sid.encode()))

    def drop(self, key: bytes) -> None:
        """Forget the session at a store key, and its place in the user's index."""
        entry = self._data.pop(key, None)
        if entry is None:
            return
        session = entry.session
        mine = self._by_user.get(session.uid)
        if mine is not None:
            mine.pop(session.handle, None)
            if not mine:
                del self._by_user[session.uid]

    async def list(self, uid: str) -> list[SessionInfo]:
        now = time.time()
        out = []
        for key in list(self._by_user.get(uid, {}).values()):
            entry = self._data[key]
            session = entry.session
            if _expired(session, entry.seen, now, self.idle_ttl, self.absolute_ttl):
                self.drop(key)
                continue
            out.append(SessionInfo(session.handle, session.created, entry.seen, session.user_agent, session.ip))
        return out

    async def end(self, uid: str, handle: str) -> bool:
        return self.end_now(uid, handle)

    async def end_all(self, uid: str, keep: str | None = None) -> None:
        self.end_all_now(uid, keep)

    def end_now(self, uid: str, handle: str) -> bool:
        key = self._by_user.get(uid, {}).get(handle)
        if key is None:
            return False
        self.drop(key)
        return True

    def end_all_now(self, uid: str, keep: str | None = None) -> None:
        for handle, key in list(self._by_user.get(uid, {}).items()):
            if handle != keep:
                self.drop(key)

    def live(self) -> Iterator[tuple[bytes, Session]]:
        """Every session not yet expired, with its store key (what a replica that starts late copies)."""
        now = time.time()
        for k, e in self._data.items():
            if not _expired(e.session, e.seen, now, self.idle_ttl, self.absolute_ttl):
                yield k, e.session

    def touch(self, session: Session) -> None:
        """The idle timer was renewed by `lookup` itself."""

    def __len__(self) -> int:
        return len(self._data)


# Login: the session and its index entry in one step; beyond the cap, the least recently used go.
_PUT = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('HSET', KEYS[3], ARGV[4], KEYS[1])
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if extra > 0 then
  for _, h in ipairs(redis.call('ZRANGE', KEYS[2], 0, extra - 1)) do
    local k = redis.call('HGET', KEYS[3], h)
    if k then redis.call('DEL', k) end
    redis.call('HDEL', KEYS[3], h)
    redis.call('ZREM', KEYS[2], h)
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('EXPIRE', KEYS[3], ARGV[6])
return 1
"""

# End one session by handle; 0 when the user has no such session.
_END = """
local k = redis.call('HGET', KEYS[2], ARGV[1])
if not k then return 0 end
redis.call('DEL', k)
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""

# End every session of a user but ARGV[1] (may be empty).
_END_ALL = """
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then
    redis.call('DEL', all[i + 1])
    redis.call('HDEL', KEYS[2], all[i])
    redis.call('ZREM', KEYS[1], all[i])
  end
end
return 1
"""

# List: prune members whose session expired by itself, return handle, last use, key, value of the rest.
_LIST = """
local out = {}
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local v = redis.call('GET', all[i + 1])
  if v then
    table.insert(out, all[i])
    table.insert(out, redis.call('ZSCORE', KEYS[1], all[i]) or '0')
    table.insert(out, all[i + 1])
    table.insert(out, v)
  else
    redis.call('HDEL', KEYS[2], all[i])
    redis.call('ZREM', KEYS[1], all[i])
  end
end
return out
"""

TOUCH_INTERVAL = 60.0  # seconds: how stale a session's `last_seen` in the index may get


class RedisSessions:
    """Sessions in the shared Redis: one round trip per lookup (a GET, or a GETEX that also renews the idle
    TTL when this replica last renewed it more than a quarter of the idle timeout ago, at most a minute).

    The per-user index is written by login, logout, listing and revocation, never by a plain lookup;
    `last_seen` is refreshed in the background at most once a `TOUCH_INTERVAL` per session per process.
    """

    def __init__(
        self,
        store: Store,
        coalescer: Reads,
        idle_ttl: int,
        absolute_ttl: int,
        mac: SessionMAC,
        keys: Keyspace,
        max_per_user: int = 10,
        max_decoded: int = 4096,
    ) -> None:
        self.store = store
        self.keys = keys
        self.coalescer = coalescer
        self.idle_ttl = idle_ttl
        self.absolute_ttl = absolute_ttl
        self.mac = mac
        self.max_per_user = max_per_user
        self.max_decoded = max_decoded
        # A session's stored bytes never change after login, so checking and decoding them is remembered by
        # those bytes, with the store key they were sealed for (nothing here says a session exists; only
        # Redis's reply does).
        self._decoded: dict[bytes, tuple[str, Session]] = {}
        self._touched: dict[str, float] = {}
        self._renewed: dict[str, float] = {}
        self.renew_every = min(TOUCH_INTERVAL, idle_ttl / 4)
        self._put = store.script(_PUT)
        self._end = store.script(_END)
        self._end_all = store.script(_END_ALL)
        self._list = store.script(_LIST)

    @staticmethod
    def key(raw_sid: bytes) -> str:
        return redis_key(raw_sid)

    @classmethod
    def for_settings(cls, settings: Settings, store: Store, reads: Reads) -> RedisSessions:
        """The cluster's Redis sessions, as the auth service writes them and every replica reads them."""
        key = settings.secret("session_key").encode()
        return cls(
            store,
            reads,
            settings.session_idle_ttl,
            settings.session_absolute_ttl,
            SessionMAC(key),
            Keyspace(key),
            settings.max_sessions_per_user,
        )

    async def get(self, sid: str) -> Session | None:
        return await self.lookup(session_key(sid))

    def _decode(self, key: str, raw: bytes) -> Session | None:
        found = self._decoded.get(raw)
        if found is not None and found[0] == key:
            return found[1]
        value = self.mac.open(key, raw)
        if value is None:  # written by somebody without the server key
            return None
        try:
            session = Session.from_json(value)
        except (ValueError, KeyError, TypeError):
            return None
        if len(self._decoded) >= self.max_decoded:
            self._decoded.clear()
        self._decoded[raw] = (key, session)
        return session

    async def lookup(self, key: str) -> Session | None:
        # The idle timer is renewed (GETEX, a write that Redis also sends to its replicas) at most every
        # `renew_every` seconds per session per replica; in between a plain GET reads it, or the near-cache
        # answers for it (it cannot have expired since this replica renewed it: renew_every < idle TTL).
        now = time.monotonic()
        if now - self._renewed.get(key, -1e9) < self.renew_every:
            cache = self.coalescer.cache_for(key)
            if cache is None:
                raw = await redis_call(lambda: self.coalescer.call("GET", key), UNAVAILABLE)
            else:
                raw = cache.get(key)
                if raw is MISS:
                    raw = await self._read_through(cache, key)
        else:
            if len(self._renewed) >= 100_000:
                self._renewed.clear()
            self._renewed[key] = now
            raw = await redis_call(lambda: self.coalescer.call("GETEX", key, "EX", self.idle_ttl), UNAVAILABLE)
        if raw is None:
            return None
        assert isinstance(raw, bytes)
        session = self._decode(key, raw)
        if session is None:
            return None
        if time.time() - session.created >= self.absolute_ttl:
            await self._end_handle(session.uid, session.handle)
            await self.store.run(key, lambda pipe: pipe.delete(key), UNAVAILABLE)
            return None
        return session

    async def _read_through(self, cache: NearCache, key: str) -> object:
        keys = (key.encode(),)
        token = cache.begin(keys)
        try:
            raw = await redis_call(lambda: self.coalescer.call("GET", key), UNAVAILABLE)
        except BaseException:
            cache.done(keys)
            raise
        cache.keep(token, key, keys, raw)  # a session that is not there is cached too, until it is written
        return raw

    def touch(self, session: Session) -> None:
        """Moves the session up in its user's index (for `last_seen` and the cap), at most once a minute."""
        now = time.time()
        if now - self._touched.get(session.handle, 0.0) < TOUCH_INTERVAL:
            return
        if len(self._touched) >= 100_000:
            self._touched.clear()
        self._touched[session.handle] = now
        zset, _ = self.keys.user_sessions(session.uid)
        # XX: only a member still there is updated, so this can never bring back an ended session.
        future = self.coalescer.call("ZADD", zset, "XX", now, session.handle)
        future.add_done_callback(lambda f: f.exception())  # fire and forget; a lost touch is harmless

    def new_id(self, uid: str) -> str:
        """A session ID for a login of `uid`: in the user's slot, with the user's index."""
        return new_session_id(self.keys.tag(uid))

    async def put(self, sid: str, session: Session) -> None:
        """Store a login's session; `sid` from `new_id` (its slot is the user's: one script writes both)."""
        key = session_key(sid)
        zset, handles = self.keys.user_sessions(session.uid)
        sealed = self.mac.seal(key, session.to_json())
        args: list[str | int | float | bytes] = [
            sealed,
            self.idle_ttl,
            time.time(),
            session.handle,
            self.max_per_user,
            self.absolute_ttl,
        ]
        await self.store.run(
            key, lambda pipe: self._put(keys=[key, zset, handles], args=args, client=pipe), UNAVAILABLE, durable=True
        )

    async def delete(self, sid: str) -> None:
        key = session_key(sid)
        (raw,) = await self.store.run(key, lambda pipe: pipe.getdel(key), UNAVAILABLE, durable=True, revokes=True)
        session = self._decode(key, raw) if isinstance(raw, bytes) else None
        if session is not None:
            await self._end_handle(session.uid, session.handle)

    async def _end_handle(self, uid: str, handle: str) -> bool:
        zset, handles = self.keys.user_sessions(uid)
        (ended,) = await self.store.run(
            zset,
            lambda pipe: self._end(keys=[zset, handles], args=[handle], client=pipe),
            UNAVAILABLE,
            durable=True,
            revokes=True,
        )
        return bool(ended)

    async def end(self, uid: str, handle: str) -> bool:
        return await self._end_handle(uid, handle)

    async def end_all(self, uid: str, keep: str | None = None) -> None:
        zset, handles = self.keys.user_sessions(uid)
        await self.store.run(
            zset,
            lambda pipe: self._end_all(keys=[zset, handles], args=[keep or ""], client=pipe),
            UNAVAILABLE,
            durable=True,
            revokes=True,
        )

    async def list(self, uid: str) -> list[SessionInfo]:
        zset, handles = self.keys.user_sessions(uid)
        (flat,) = await self.store.run(zset, lambda pipe: self._list(keys=[zset, handles], client=pipe), UNAVAILABLE)
        out = []
        for i in range(0, len(flat), 4):
            handle, score, key, raw = flat[i].decode(), float(flat[i + 1]), flat[i + 2].decode(), flat[i + 3]
            session = self._decode(key, raw)
            if session is None or session.uid != uid or session.handle != handle:
                continue
            out.append(SessionInfo(handle, session.created, score, session.user_agent, session.ip))
        return out
