"""What the near-cache costs Redis, measured apart from the traffic: the tracking table's memory per key,
the invalidation chatter per write in the default mode (what the replicas use) and in `BCAST` (the
alternative), and Redis's CPU per write of each kind a session sees (a login's write, a renewal, a
revocation) with replicas tracking it.

The "replicas" here are plain RESP3 sockets with `CLIENT TRACKING` on, each having read every key, as
replicas behind a round-robin balancer all end up reading every live session.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import hiredis

from scaleout.core.config import Settings
from scaleout.core.pipelined import pack
from scaleout.lab.bench.results import TrackingCost
from scaleout.lab.drivers.base import ClusterError
from scaleout.lab.redisadmin import redis_command

if TYPE_CHECKING:
    from scaleout.core.sessions import RedisSessions
    from scaleout.core.store import Reads, Store


def bench_sessions(store: Store, reads: Reads, idle_ttl: int = 60) -> RedisSessions:
    """The product's Redis session store under a key of its own (the bench writes, then reads, sessions)."""
    from scaleout.core.keyspace import Keyspace
    from scaleout.core.sessions import RedisSessions, SessionMAC

    key = secrets.token_bytes(32)
    return RedisSessions(store, reads, idle_ttl, 2 * idle_ttl, SessionMAC(key), Keyspace(key))


PREFIX = "sess:bench-tracking:"
BATCH = 500


class _Client:
    """One RESP3 connection as the lab's administrator: sends pipelined batches, counts pushes and bytes."""

    def __init__(self, host: str, port: int, username: str, password: str, tracking: Sequence[str] = ()) -> None:
        self.sock = socket.create_connection((host, port), timeout=10.0)
        self.reader = hiredis.Reader()
        self.pushes = 0
        self.push_keys = 0
        self.received = 0
        setup: list[tuple[str, ...]] = [("HELLO", "3", "AUTH", username, password)]
        if tracking:
            setup.append(("CLIENT", "TRACKING", "ON", *tracking))
        self.call(setup)

    def call(self, commands: Iterable[tuple[str, ...]]) -> list[object]:
        """Sends the commands in batches; their replies (pushes met on the way are counted, not returned)."""
        out: list[object] = []
        batch: list[tuple[str, ...]] = []
        for command in commands:
            batch.append(command)
            if len(batch) == BATCH:
                out += self._round_trip(batch)
                batch = []
        if batch:
            out += self._round_trip(batch)
        return out

    def _round_trip(self, batch: list[tuple[str, ...]]) -> list[object]:
        self.sock.sendall(b"".join(pack(c) for c in batch))
        replies: list[object] = []
        while len(replies) < len(batch):
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ClusterError("the bench Redis closed a tracking connection")
            self.received += len(chunk)
            self.reader.feed(chunk)
            while (reply := self.reader.gets()) is not False:
                if isinstance(reply, hiredis.PushNotification):
                    self.pushes += 1
                    keys = reply[1] if len(reply) > 1 else None
                    self.push_keys += len(keys) if isinstance(keys, list) else 1
                elif isinstance(reply, hiredis.ReplyError):
                    raise ClusterError(f"the bench Redis refused a command: {reply}")
                else:
                    replies.append(reply)
        return replies

    def drain(self) -> None:
        """Everything Redis sent this connection before now: a PING's reply comes after it."""
        self.call([("PING",)])

    def close(self) -> None:
        self.sock.close()


def tracking_costs(settings: Settings, host: str, port: int, keys: int = 20_000, replicas: int = 3) -> TrackingCost:
    admin = (settings.redis_admin_username, settings.redis_admin_password() or "")

    def info(section: str) -> dict[str, str]:
        reply = str(redis_command(host, port, *admin, "INFO", section, timeout=5.0) or "")
        return dict(line.split(":", 1) for line in reply.splitlines() if ":" in line)

    def cpu_us() -> float:
        found = info("cpu")
        return (float(found["used_cpu_sys"]) + float(found["used_cpu_user"])) * 1e6

    names = [f"{PREFIX}{i}" for i in range(keys)]
    fresh = [f"{PREFIX}new:{i}" for i in range(keys)]
    value = "x" * 200  # about a sealed session
    writer = _Client(host, port, *admin)
    results: dict[str, tuple[float, float, float, float, float]] = {}
    try:
        for mode, tracking in (("none", ()), ("default", ("NOLOOP",)), ("bcast", ("BCAST", "PREFIX", PREFIX))):
            writer.call([("UNLINK", *names[i : i + BATCH]) for i in range(0, keys, BATCH)])
            writer.call([("UNLINK", *fresh[i : i + BATCH]) for i in range(0, keys, BATCH)])
            writer.call([("SET", k, value) for k in names])
            clients = [_Client(host, port, *admin, tracking=tracking) for _ in range(replicas)]
            try:
                memory = int(info("memory")["used_memory"])
                for c in clients:
                    c.call([("GET", k) for k in names])
                table = (int(info("memory")["used_memory"]) - memory) / keys
                for c in clients:  # what the reads brought back is not chatter
                    c.pushes = c.push_keys = c.received = 0
                row = [table]
                for written in (names, fresh):  # keys every replica read, then keys none had read (logins)
                    before = cpu_us()
                    writer.call([("SET", k, value) for k in written])
                    spent = cpu_us() - before
                    for c in clients:
                        c.drain()
                    row += [sum(c.push_keys for c in clients) / keys, spent / keys]
                    for c in clients:
                        c.pushes = c.push_keys = c.received = 0
                results[mode] = (row[0], row[1], row[2], row[3], row[4])
            finally:
                for c in clients:
                    c.close()
        writer.call([("UNLINK", *names[i : i + BATCH]) for i in range(0, keys, BATCH)])
        writer.call([("UNLINK", *fresh[i : i + BATCH]) for i in range(0, keys, BATCH)])
        login, renewal, renewal_invalidations, revocation = _session_writes(
            settings, host, port, cpu_us, replicas, admin, min(keys, 2000)
        )
    finally:
        writer.close()
    none, default, bcast = results["none"], results["default"], results["bcast"]
    return TrackingCost(
        keys=keys,
        replicas=replicas,
        table_bytes_per_key_default=round(default[0] - none[0], 1),
        table_bytes_per_key_bcast=round(bcast[0] - none[0], 1),
        invalidations_per_write_read_default=round(default[1], 2),
        invalidations_per_write_unread_default=round(default[3], 2),
        invalidations_per_write_read_bcast=round(bcast[1], 2),
        invalidations_per_write_unread_bcast=round(bcast[3], 2),
        write_cpu_us_untracked=round((none[2] + none[4]) / 2, 2),
        write_cpu_us_read_default=round(default[2], 2),
        write_cpu_us_read_bcast=round(bcast[2], 2),
        write_cpu_us_unread_bcast=round(bcast[4], 2),
        login_cpu_us=login,
        renewal_cpu_us=renewal,
        invalidations_per_renewal=renewal_invalidations,
        revocation_cpu_us=revocation,
    )


def _session_writes(
    settings: Settings,
    host: str,
    port: int,
    cpu_us: Callable[[], float],
    replicas: int,
    admin: tuple[str, str],
    n: int,
) -> tuple[float, float, float, float]:
    """Redis CPU per login (the session write), per renewal (`GETEX`) and per revocation (a logout: the
    session and its index entry), each through the product's own store, with `replicas` tracking
    connections holding every session (so each renewal and revocation also invalidates them)."""
    from scaleout.core.sessions import Session, new_handle, new_session_id, session_key
    from scaleout.core.store import Store, make_redis

    sids = [new_session_id() for _ in range(n)]
    clients = [_Client(host, port, *admin, tracking=("NOLOOP",)) for _ in range(replicas)]

    async def measure() -> tuple[float, float, float, float]:
        redis = Store(make_redis(settings))
        reads = redis.reads()
        store = bench_sessions(redis, reads, 600)
        try:
            before = cpu_us()
            for i, sid in enumerate(sids):
                await store.put(sid, Session("bench", "c", time.time(), f"uid-tracking-{i}", new_handle()))
            login = (cpu_us() - before) / n
            for c in clients:
                c.call([("GET", session_key(sid)) for sid in sids])
                c.pushes = c.push_keys = 0
            before = cpu_us()
            await asyncio.gather(*(reads.call("GETEX", session_key(sid), "EX", 600) for sid in sids))
            renewal = (cpu_us() - before) / n
            for c in clients:  # what the renewals invalidated is read again, as the replicas would
                c.drain()
            renewal_invalidations = sum(c.push_keys for c in clients) / n
            for c in clients:
                c.call([("GET", session_key(sid)) for sid in sids])
            before = cpu_us()
            for sid in sids:
                await store.delete(sid)
            revocation = (cpu_us() - before) / n
        finally:
            await reads.aclose()
            await redis.aclose()
        return round(login, 1), round(renewal, 2), round(renewal_invalidations, 2), round(revocation, 1)

    try:
        return asyncio.run(measure())
    finally:
        for c in clients:
            c.close()
