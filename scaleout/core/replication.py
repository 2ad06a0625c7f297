"""Session clustering by replication (`SESSION_STORE=replicated`): every replica keeps every session in its
own memory and sends each change to every other replica, as Tomcat's all-to-all `DeltaManager` does.

Replication is synchronous with a bound: a login (or logout, or revocation) answers once every peer has
acknowledged the change or `REPLICATION_TIMEOUT` has passed for the ones that did not, so a session is usable
on every live replica as soon as the login returns, and a dead or slow peer delays a login by at most the
timeout, never forever. A replica that starts late copies the sessions of a live peer before it reports
healthy. Messages between replicas carry an HMAC under the cluster's session key: the replication
endpoints are not behind nginx, and nobody without the key can plant a session through them.

What a replica confirms. A login answers once every peer acknowledged it or the timeout passed (a peer
that missed it gets it resent). A revocation (logout, ending a session, logout-all) answers 204 only when
every peer either acknowledged it or is down (refuses connections: it serves nobody, and on restart it
copies every live peer's sessions *and tombstones*, and the resend reaches it once it listens); a peer that
is up but silent gets the change resent until it acknowledges, and the caller gets 503 with `Retry-After`,
as in Redis mode when a revocation cannot be confirmed. An ended session leaves a tombstone (its key, its
handle, or the user's logout-all time) for the session lifetime, so a late or replayed `put` can never bring
it back, whatever order messages arrive in.

Each message is signed whole: sender, boot, counter and time included; a message outside the replay window
or seen before is not applied again. A snapshot is asked for with a fresh signed nonce, and answered signed
over that nonce.

Idle-timer renewals are not replicated (each replica renews what it serves): under any balancing that
spreads a user's requests, every replica keeps renewing; a replica that never sees a user forgets the
session after the idle timeout, as that replica's memory would anyway.
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import itertools
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from hashlib import sha256
from typing import Any

import httpx
import orjson
from prometheus_client import Counter, Histogram

from scaleout.core.sessions import HANDLE, MemorySessions, Session
from scaleout.core.store import StoreUnavailable

log = logging.getLogger("scaleout.replication")
MESSAGES = Counter("scaleout_replication_messages_total", "Replication messages sent to peers")
BYTES = Counter("scaleout_replication_bytes_total", "Replication bytes sent to peers")
APPLIED = Counter("scaleout_replication_applied_total", "Peers' changes applied here")
FANOUT = Histogram(
    "scaleout_replication_seconds",
    "From sending a change to every peer's acknowledgement (or the timeout)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
RESENT = Counter("scaleout_replication_resent_total", "Changes sent again to a peer that had not acknowledged them")
BURIED = Counter("scaleout_replication_refused_puts_total", "Sessions not stored because they had already ended")
MAX_MESSAGE = 64 * 1024  # one change is a few hundred bytes; anything far larger is refused
SIGNATURE = "x-replication-mac"
REPLAY_WINDOW = 30.0  # seconds: a message signed longer ago (or further ahead) is refused
FUTURE_SKEW = 60.0  # seconds: a session "created" further ahead than this is refused
MAX_PENDING = 10_000  # changes waiting to be resent; beyond it the oldest go (logged)
MAX_TOMBSTONES = 200_000  # per kind, like the sessions themselves
RESEND_MAX_DELAY = 1.0
UNCONFIRMED = "the change is made on this replica and will be resent, but not every replica confirmed it yet"


class Refused(Exception):
    """A replication message that is malformed, unsigned, forged or too large: dropped with a log line."""


def same_mac(sent: str | None, expected: str) -> bool:
    """Whether a MAC from a header is the expected one, in constant time. Compared as bytes: a header may
    hold any latin-1 character, and `compare_digest` refuses a non-ASCII str with a TypeError (a 500)."""
    return bool(sent) and hmac.compare_digest((sent or "").encode("latin-1", "replace"), expected.encode())


def sign(key: bytes, body: bytes) -> str:
    return hmac.new(key, b"replication\0" + body, sha256).hexdigest()


def snapshot_request(key: bytes, nonce: str, ts: str) -> str:
    return sign(key, b"snapshot\0" + nonce.encode() + b"\0" + ts.encode())


def snapshot_reply(key: bytes, nonce: str, body: bytes) -> str:
    return sign(key, b"snapshot-reply\0" + nonce.encode() + b"\0" + body)


class Delivery(enum.Enum):
    acked = "acked"
    down = "down"  # refused the connection: not serving anybody
    silent = "silent"  # up but did not answer in time, or answered with an error


@dataclass(slots=True)
class _Pending:
    change: dict[str, Any]
    peers: set[str]
    until: float


def _store_key(value: object) -> bytes:
    if not isinstance(value, str) or len(value) != 64:
        raise ValueError("a store key is 64 hex digits")
    return bytes.fromhex(value)


def _handle(value: object) -> str:
    if not isinstance(value, str) or HANDLE.fullmatch(value) is None:
        raise ValueError("not a session handle")
    return value


def _uid(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise ValueError("not a user id")
    return value


class ReplicatedSessions(MemorySessions):
    """This replica's copy of every session, kept in step with its peers', and the tombstones of ended ones."""

    def __init__(
        self,
        idle_ttl: int,
        absolute_ttl: int,
        max_per_user: int,
        key: bytes,
        peers: list[str],
        http: httpx.AsyncClient,
        timeout: float,
        name: str = "",
    ) -> None:
        super().__init__(idle_ttl, absolute_ttl, max_per_user)
        self.secret = key
        self.peers = peers
        self.http = http
        self.timeout = timeout
        self.name = name
        self.boot = secrets.token_hex(8)  # a restarted sender's counter starts again under a new boot
        self._seq = itertools.count(1)
        self._seen: OrderedDict[tuple[str, int], float] = OrderedDict()  # (boot, seq) or nonces -> received
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._resender: asyncio.Task[None] | None = None
        self._dead_keys: OrderedDict[bytes, float] = OrderedDict()  # store key -> until
        self._dead_handles: OrderedDict[tuple[str, str], float] = OrderedDict()  # (uid, handle) -> until
        self._ended: OrderedDict[str, tuple[float, str | None]] = OrderedDict()  # uid -> (logout-all time, kept)

    # --- tombstones: what ended stays ended, whatever arrives late ------------------------------------

    def _bury(self, book: OrderedDict[Any, float], item: Any) -> None:
        now = time.time()
        book[item] = now + self.absolute_ttl
        book.move_to_end(item)
        while book and (len(book) > MAX_TOMBSTONES or next(iter(book.values())) < now):
            book.popitem(last=False)

    def buried(self, key: bytes, session: Session) -> bool:
        if key in self._dead_keys or (session.uid, session.handle) in self._dead_handles:
            return True
        ended = self._ended.get(session.uid)
        return ended is not None and session.created < ended[0] and session.handle != ended[1]

    def keep(self, key: bytes, session: Session) -> None:
        if self.buried(key, session):
            BURIED.inc()
            return
        super().keep(key, session)

    def drop(self, key: bytes) -> None:
        entry = self._data.get(key)
        if entry is not None:
            self._bury(self._dead_handles, (entry.session.uid, entry.session.handle))
        self._bury(self._dead_keys, key)
        super().drop(key)

    def end_now(self, uid: str, handle: str) -> bool:
        self._bury(self._dead_handles, (uid, handle))
        return super().end_now(uid, handle)

    def end_all_now(self, uid: str, keep: str | None = None, at: float | None = None) -> None:
        at = time.time() if at is None else at
        before = self._ended.get(uid)
        if before is None or before[0] <= at:
            self._ended[uid] = (at, keep)
            self._ended.move_to_end(uid)
            oldest = at - self.absolute_ttl
            while self._ended and (len(self._ended) > MAX_TOMBSTONES or next(iter(self._ended.values()))[0] < oldest):
                self._ended.popitem(last=False)
        super().end_all_now(uid, keep)

    # --- changes made here, then sent to every peer -------------------------------------------------

    async def put(self, sid: str, session: Session) -> None:
        await super().put(sid, session)
        await self.broadcast({"op": "put", "key": self.key_of(sid).hex(), "s": session.as_dict()})

    async def delete(self, sid: str) -> None:
        await super().delete(sid)
        await self.broadcast({"op": "del", "key": self.key_of(sid).hex()}, confirm=True)

    async def end(self, uid: str, handle: str) -> bool:
        ended = await super().end(uid, handle)
        await self.broadcast({"op": "end", "uid": uid, "handle": handle}, confirm=True)
        return ended

    async def end_all(self, uid: str, keep: str | None = None) -> None:
        at = time.time()
        self.end_all_now(uid, keep, at)
        await self.broadcast({"op": "end_all", "uid": uid, "keep": keep, "at": at}, confirm=True)

    @staticmethod
    def key_of(sid: str) -> bytes:
        return MemorySessions.key(sid.encode())

    async def broadcast(self, change: dict[str, Any], confirm: bool = False) -> None:
        """Send a change to every peer; those that did not acknowledge get it again until they do. With
        `confirm` (a revocation), a peer that is up but did not acknowledge makes it a `StoreUnavailable`."""
        seq = next(self._seq)
        started = time.perf_counter()
        results = await asyncio.gather(*(self._send(peer, seq, change) for peer in self.peers))
        FANOUT.observe(time.perf_counter() - started)
        missed = {peer for peer, result in zip(self.peers, results, strict=True) if result is not Delivery.acked}
        if missed:
            log.warning(
                "replication: %d of %d peers did not acknowledge %s", len(missed), len(self.peers), change["op"]
            )
            self._hold(seq, change, missed)
        if confirm and Delivery.silent in results:
            raise StoreUnavailable(UNCONFIRMED)

    def _envelope(self, seq: int, change: dict[str, Any]) -> bytes:
        return orjson.dumps({"from": self.name, "boot": self.boot, "seq": seq, "ts": time.time(), "change": change})

    async def _send(self, peer: str, seq: int, change: dict[str, Any]) -> Delivery:
        body = self._envelope(seq, change)  # signed afresh on every attempt: its time is part of it
        headers = {SIGNATURE: sign(self.secret, body), "content-type": "application/json"}
        MESSAGES.inc()
        BYTES.inc(len(body))
        try:
            r = await self.http.post(f"{peer}/internal/replicate", content=body, headers=headers, timeout=self.timeout)
        except httpx.ConnectError:
            return Delivery.down
        except httpx.HTTPError:
            return Delivery.silent
        return Delivery.acked if r.status_code == 204 else Delivery.silent

    def _hold(self, seq: int, change: dict[str, Any], peers: set[str]) -> None:
        self._pending[seq] = _Pending(change, peers, time.time() + self.absolute_ttl)
        while len(self._pending) > MAX_PENDING:
            lost, _ = self._pending.popitem(last=False)
            log.error("replication: more than %d changes unacknowledged; change %d given up", MAX_PENDING, lost)
        if self._resender is None or self._resender.done():
            self._resender = asyncio.get_running_loop().create_task(self._resend())

    async def _resend(self) -> None:
        """Send what a peer missed, oldest first, until every peer acknowledged it (or its session would
        have expired anyway); slower while a peer stays away."""
        delay = 0.05
        while self._pending:
            await asyncio.sleep(delay)
            now = time.time()
            progress = False
            for seq, pending in list(self._pending.items()):
                if pending.until < now:
                    del self._pending[seq]
                    continue
                targets = sorted(pending.peers)
                results = await asyncio.gather(*(self._send(peer, seq, pending.change) for peer in targets))
                RESENT.inc(len(targets))
                for peer, result in zip(targets, results, strict=True):
                    if result is Delivery.acked:
                        pending.peers.discard(peer)
                        progress = True
                if not pending.peers:
                    del self._pending[seq]
            delay = 0.05 if progress else min(delay * 2, RESEND_MAX_DELAY)

    async def aclose(self) -> None:
        if self._resender is not None:
            self._resender.cancel()
            await asyncio.gather(self._resender, return_exceptions=True)

    # --- changes received from a peer -------------------------------------------------------------

    def _fresh(self, ident: tuple[str, int], ts: object) -> bool:
        """Whether a signed message or request is new: within the replay window, and not seen before."""
        if not isinstance(ts, int | float) or isinstance(ts, bool):
            raise Refused("no time")
        now = time.time()
        if abs(now - ts) > REPLAY_WINDOW:
            raise Refused("outside the replay window")
        while self._seen and (next(iter(self._seen.values())) < now - 2 * REPLAY_WINDOW or len(self._seen) > 500_000):
            self._seen.popitem(last=False)
        if ident in self._seen:
            return False
        self._seen[ident] = now
        return True

    def receive(self, body: bytes, signature: str | None) -> bool:
        """A signed message from a peer, applied here; False when it was a repeat (already applied)."""
        change = self.check(body, signature)
        if change is None:
            return False
        self.apply(change)
        return True

    def check(self, body: bytes, signature: str | None) -> dict[str, Any] | None:
        if len(body) > MAX_MESSAGE:
            raise Refused("too large")
        if not same_mac(signature, sign(self.secret, body)):
            raise Refused("bad signature")
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Refused("not JSON") from exc
        if not isinstance(message, dict):
            raise Refused("not a message")
        boot, seq, change = message.get("boot"), message.get("seq"), message.get("change")
        if not isinstance(boot, str) or len(boot) != 16 or not isinstance(seq, int) or seq < 1:
            raise Refused("no sender")
        if boot == self.boot:
            raise Refused("sent by this replica")
        if not isinstance(change, dict) or change.get("op") not in ("put", "del", "end", "end_all"):
            raise Refused("unknown change")
        if not self._fresh((boot, seq), message.get("ts")):
            return None
        return change

    def apply(self, change: dict[str, Any]) -> None:
        """A peer's change, applied here without sending it on (every replica sends its own changes)."""
        try:
            op = change["op"]
            if op == "put":
                session = Session.from_dict(change["s"])
                _uid(session.uid)
                _handle(session.handle)
                if not 0 < session.created <= time.time() + FUTURE_SKEW:
                    raise ValueError("created in the future")
                self.keep(_store_key(change["key"]), session)
            elif op == "del":
                self.drop(_store_key(change["key"]))
            elif op == "end":
                self.end_now(_uid(change["uid"]), _handle(change["handle"]))
            else:
                keep, at = change.get("keep"), change["at"]
                if not isinstance(at, int | float) or at > time.time() + FUTURE_SKEW:
                    raise ValueError("logout-all time")
                self.end_all_now(_uid(change["uid"]), None if keep is None else _handle(keep), float(at))
        except (KeyError, ValueError, TypeError) as exc:
            raise Refused(f"malformed {change.get('op')}") from exc
        APPLIED.inc()

    # --- state transfer for a replica that starts late ------------------------------------------

    def snapshot(self, nonce: str, ts: str, signature: str | None) -> bytes:
        """Every live session and tombstone, for a peer that proved it holds the key with a fresh nonce."""
        if not (16 <= len(nonce) <= 64) or not same_mac(signature, snapshot_request(self.secret, nonce, ts)):
            raise Refused("unsigned snapshot request")
        try:
            sent_at = float(ts)
        except ValueError as exc:
            raise Refused("no time") from exc
        if not self._fresh((nonce, 0), sent_at):
            raise Refused("a snapshot request seen before")
        return orjson.dumps(
            {
                "sessions": [{"key": k.hex(), "s": session.as_dict()} for k, session in self.live()],
                "dead_keys": [k.hex() for k in self._dead_keys],
                "dead_handles": list(self._dead_handles),
                "ended": [[uid, at, kept] for uid, (at, kept) in self._ended.items()],
            }
        )

    async def _fetch(self, peer: str) -> dict[str, Any] | None:
        nonce, ts = secrets.token_hex(16), repr(time.time())
        try:
            r = await self.http.get(
                f"{peer}/internal/sessions",
                params={"nonce": nonce, "ts": ts},
                headers={SIGNATURE: snapshot_request(self.secret, nonce, ts)},
                timeout=2.0,
            )
            if r.status_code != 200 or not same_mac(
                r.headers.get(SIGNATURE), snapshot_reply(self.secret, nonce, r.content)
            ):
                return None
            snapshot = orjson.loads(r.content)
            return snapshot if isinstance(snapshot, dict) else None
        except (httpx.HTTPError, orjson.JSONDecodeError):
            return None

    async def catch_up(self) -> int:
        """Copy the sessions of every peer that answers, minus everything any of them knows has ended (a
        logout that one peer missed must not come back through it); 0 when none answers."""
        snapshots = [s for s in await asyncio.gather(*(self._fetch(p) for p in self.peers)) if s is not None]
        for snap in snapshots:
            try:
                for k in snap.get("dead_keys", []):
                    self._bury(self._dead_keys, _store_key(k))
                for uid, handle in snap.get("dead_handles", []):
                    self._bury(self._dead_handles, (_uid(uid), _handle(handle)))
                for uid, at, kept in snap.get("ended", []):
                    self.end_all_now(_uid(uid), None if kept is None else _handle(kept), float(at))
            except (ValueError, TypeError) as exc:
                log.warning("replication: a peer's tombstones were malformed: %s", exc)
        for snap in snapshots:
            for item in snap.get("sessions", []):
                try:
                    self.apply({"op": "put", "key": item["key"], "s": item["s"]})
                except (Refused, KeyError, TypeError) as exc:
                    log.warning("replication: a peer's session was malformed: %s", exc)
        return len(self)
