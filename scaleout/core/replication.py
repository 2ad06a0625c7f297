"""Session clustering by replication (`SESSION_STORE=replicated`): every replica keeps every session in its
own memory and sends each change to every other replica, as Tomcat's all-to-all `DeltaManager` does.

Replication is synchronous with a bound: a login (or logout, or revocation) answers once every peer has
acknowledged the change or `REPLICATION_TIMEOUT` has passed for the ones that did not, so a session is usable
on every live replica as soon as the login returns, and a dead or slow peer delays a login by at most the
timeout, never forever. A replica that starts late copies the sessions of a live peer before it reports
healthy. Messages between replicas carry an HMAC under the cluster's session key: the replication
endpoints are not behind nginx, and nobody without the key can plant a session through them.

Idle-timer renewals are not replicated (each replica renews what it serves): under any balancing that
spreads a user's requests, every replica keeps renewing; a replica that never sees a user forgets the
session after the idle timeout, as that replica's memory would anyway.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from hashlib import sha256
from typing import Any

import httpx
import orjson
from prometheus_client import Counter, Histogram

from scaleout.core.sessions import MemorySessions, Session

log = logging.getLogger("scaleout.replication")
MESSAGES = Counter("scaleout_replication_messages_total", "Replication messages sent to peers")
BYTES = Counter("scaleout_replication_bytes_total", "Replication bytes sent to peers")
APPLIED = Counter("scaleout_replication_applied_total", "Peers' changes applied here")
FANOUT = Histogram(
    "scaleout_replication_seconds",
    "From sending a change to every peer's acknowledgement (or the timeout)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
MAX_MESSAGE = 64 * 1024  # one change is a few hundred bytes; anything far larger is refused
SIGNATURE = "x-replication-mac"


class Refused(Exception):
    """A replication message that is malformed, unsigned, forged or too large: dropped with a log line."""


def same_mac(sent: str | None, expected: str) -> bool:
    """Whether a MAC from a header is the expected one, in constant time. Compared as bytes: a header may
    hold any latin-1 character, and `compare_digest` refuses a non-ASCII str with a TypeError (a 500)."""
    return bool(sent) and hmac.compare_digest((sent or "").encode("latin-1", "replace"), expected.encode())


def sign(key: bytes, body: bytes) -> str:
    return hmac.new(key, b"replication\0" + body, sha256).hexdigest()


class ReplicatedSessions(MemorySessions):
    """This replica's copy of every session, kept in step with its peers'."""

    def __init__(
        self,
        idle_ttl: int,
        absolute_ttl: int,
        max_per_user: int,
        key: bytes,
        peers: list[str],
        http: httpx.AsyncClient,
        timeout: float,
    ) -> None:
        super().__init__(idle_ttl, absolute_ttl, max_per_user)
        self.secret = key
        self.peers = peers
        self.http = http
        self.timeout = timeout

    # --- changes made here, then sent to every peer -------------------------------------------------

    async def put(self, sid: str, session: Session) -> None:
        await super().put(sid, session)
        await self.broadcast({"op": "put", "key": self.key_of(sid).hex(), "s": session.as_dict()})

    async def delete(self, sid: str) -> None:
        await super().delete(sid)
        await self.broadcast({"op": "del", "key": self.key_of(sid).hex()})

    async def end(self, uid: str, handle: str) -> bool:
        ended = await super().end(uid, handle)
        await self.broadcast({"op": "end", "uid": uid, "handle": handle})
        return ended

    async def end_all(self, uid: str, keep: str | None = None) -> None:
        await super().end_all(uid, keep)
        await self.broadcast({"op": "end_all", "uid": uid, "keep": keep})

    @staticmethod
    def key_of(sid: str) -> bytes:
        return MemorySessions.key(sid.encode())

    async def broadcast(self, change: dict[str, Any]) -> None:
        body = orjson.dumps(change)
        headers = {SIGNATURE: sign(self.secret, body), "content-type": "application/json"}
        started = time.perf_counter()

        async def one(peer: str) -> bool:
            try:
                r = await self.http.post(
                    f"{peer}/internal/replicate", content=body, headers=headers, timeout=self.timeout
                )
                return r.status_code == 204
            except httpx.HTTPError:
                return False

        acknowledged = sum(await asyncio.gather(*(one(p) for p in self.peers)))
        MESSAGES.inc(len(self.peers))
        BYTES.inc(len(self.peers) * len(body))
        FANOUT.observe(time.perf_counter() - started)
        if acknowledged < len(self.peers):
            log.warning(
                "replication: %d of %d peers did not acknowledge %s",
                len(self.peers) - acknowledged,
                len(self.peers),
                change["op"],
            )

    # --- changes received from a peer -------------------------------------------------------------

    def check(self, body: bytes, signature: str | None) -> dict[str, Any]:
        if len(body) > MAX_MESSAGE:
            raise Refused("too large")
        if not same_mac(signature, sign(self.secret, body)):
            raise Refused("bad signature")
        try:
            change = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Refused("not JSON") from exc
        if not isinstance(change, dict) or change.get("op") not in ("put", "del", "end", "end_all"):
            raise Refused("unknown change")
        return change

    def apply(self, change: dict[str, Any]) -> None:
        """A peer's change, applied here without sending it on (every replica sends its own changes)."""
        try:
            op = change["op"]
            if op == "put":
                self.keep(bytes.fromhex(change["key"]), Session.from_dict(change["s"]))
            elif op == "del":
                self.drop(bytes.fromhex(change["key"]))
            elif op == "end":
                self.end_now(str(change["uid"]), str(change["handle"]))
            else:
                keep = change.get("keep")
                self.end_all_now(str(change["uid"]), None if keep is None else str(keep))
        except (KeyError, ValueError, TypeError) as exc:
            raise Refused(f"malformed {change.get('op')}") from exc
        APPLIED.inc()

    # --- state transfer for a replica that starts late ------------------------------------------

    def snapshot(self) -> bytes:
        return orjson.dumps({"sessions": [{"key": k.hex(), "s": session.as_dict()} for k, session in self.live()]})

    async def catch_up(self) -> int:
        """Copy the sessions of the first peer that answers; 0 when none does (then this one starts empty)."""
        for peer in self.peers:
            try:
                r = await self.http.get(
                    f"{peer}/internal/sessions", headers={SIGNATURE: sign(self.secret, b"snapshot")}, timeout=2.0
                )
                if r.status_code != 200 or not same_mac(r.headers.get(SIGNATURE), sign(self.secret, r.content)):
                    continue
                for item in orjson.loads(r.content)["sessions"]:
                    self.keep(bytes.fromhex(item["key"]), Session.from_dict(item["s"]))
                return len(self)
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                continue
        return 0
