"""A lean pipelined Redis connection for the per-request reads (session lookup, denylist check).

Everything else talks to Redis through redis-py. The hot path does not: redis-py spends ~40 µs of Python
per command even when pipelined, more than a whole baseline request here (`make bench`). This keeps one
connection, writes each batch of commands as one `write()` (packed by hiredis) and resolves the callers'
futures in order straight from `data_received` (parsed by hiredis). Failure rules:

- connect, write or read errors, and a reply later than `timeout`, fail every caller waiting on the
  connection with redis-py's `ConnectionError`/`TimeoutError` and drop the connection (replies are matched
  to callers by order, so after a timeout the stream cannot be trusted); the next call reconnects;
- a Redis error reply fails only its own caller (as `ResponseError`); on a Redis Cluster a `MOVED` or `ASK`
  reply is told to `redirect` first (which re-points the routing) and fails its caller as `Redirected`, a
  connection error: the caller's one retry goes where the key is now;
- a `READONLY` reply (a primary demoted by a failover) fails every caller on the connection and drops it;
  with `locate` (behind Sentinels) the next connection goes to the primary of the moment;
- a connection authenticates (`AUTH user password`) and selects its database before any caller's command
  goes out; a refusal there fails the batch waiting for it;
- with a near-cache (`scaleout.core.nearcache`), the connection speaks RESP3 and has `CLIENT TRACKING` on:
  Redis's `invalidate` pushes arrive between the replies and go to the cache; each batch's last reply
  tells the cache the stream was alive when that batch was sent (before the callers wake); an idle
  connection sends a PING often enough to keep saying so; and every failure above empties the cache.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import cast

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from scaleout.core.nearcache import NearCache

Arg = str | int | float | bytes
Command = tuple[Arg, ...]


class Redirected(RedisConnectionError):
    """A Redis Cluster node said the key's slot is served elsewhere (`MOVED`) or is being moved (`ASK`)."""


def pack(command: Command) -> bytes:
    packed: bytes = hiredis.pack_command(command)  # type: ignore[arg-type]  # its stub says a 1-tuple; any length
    return packed


class _Protocol(asyncio.Protocol):
    def __init__(self, cache: NearCache | None = None, redirect: Callable[[str], None] | None = None) -> None:
        self.redirect = redirect
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future[object]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.cache = cache
        # With a cache: each batch's size and send time, so that a reply confirms the stream before the
        # caller it wakes reads the cache again.
        self.batches: deque[list[float]] = deque()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP connection's transport writes (uvloop's does not subclass asyncio.Transport, hence a cast).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if isinstance(reply, hiredis.PushNotification):  # RESP3, out of band: not a reply to anyone
                if self.cache is not None and len(reply) == 2 and reply[0] == b"invalidate":
                    self.cache.invalidate(reply[1])
                continue
            if not self.waiting:  # a reply nobody asked for: the stream is out of step
                self.fail(RedisConnectionError("unexpected reply from Redis"))
                return
            future = self.waiting.popleft()
            if self.cache is not None and self.batches:
                batch = self.batches[0]
                batch[0] -= 1
                if batch[0] <= 0:  # the batch's last reply: everything Redis sent before it is in
                    self.batches.popleft()
                    self.cache.confirm(batch[1])
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                if str(reply).startswith("READONLY"):
                    # A demoted primary: this connection is to a replica now. Drop it; the next connection
                    # finds the new primary (and nothing is ever written here).
                    future.set_exception(RedisConnectionError(f"the primary was demoted: {reply}"))
                    self.fail(RedisConnectionError(f"the primary was demoted: {reply}"))
                    return
                message = str(reply)
                if self.redirect is not None and message.startswith(("MOVED ", "ASK ")):
                    self.redirect(message)
                    future.set_exception(Redirected(message))
                    continue
                future.set_exception(ResponseError(message))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.cache is not None:
            self.cache.flush()  # invalidations for what it holds may be lost with the connection
        self._fail_waiting(RedisConnectionError(f"connection to Redis lost: {exc or 'closed by server'}"))

    def fail(self, exc: Exception) -> None:
        self.closed = True
        if self.cache is not None:
            self.cache.flush()
        self._fail_waiting(exc)
        if self.transport is not None:
            self.transport.abort()

    def _fail_waiting(self, exc: Exception) -> None:
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(exc)

    def send(self, payload: bytes, futures: list[asyncio.Future[object]]) -> None:
        assert self.transport is not None
        self.waiting.extend(futures)
        if self.cache is not None:
            self.batches.append([len(futures), time.perf_counter()])
        self.transport.write(payload)


def is_primary(role: object) -> bool:
    """Whether a `ROLE` reply says primary (`master`), in either reply decoding."""
    return isinstance(role, list | tuple) and bool(role) and role[0] in (b"master", "master")


class PipelinedConnection:
    """Commands issued in one event-loop turn go out together; each caller awaits its own reply."""

    def __init__(
        self,
        host: str,
        port: int,
        db: int = 0,
        timeout: float = 0.5,
        on_round_trip: Callable[[float], None] | None = None,
        username: str | None = None,
        password: str | None = None,
        locate: Callable[[], Awaitable[tuple[str, int]]] | None = None,
        cache: NearCache | None = None,
        redirect: Callable[[str], None] | None = None,
    ) -> None:
        self.host, self.port, self.db, self.timeout = host, port, db, timeout
        self.username, self.password = username, password
        # Where to connect, asked afresh on every connection (behind Sentinels: the primary now).
        self.locate = locate
        # Told each answered batch's round-trip time in seconds: one observation per write, not per caller.
        self.on_round_trip = on_round_trip
        self.cache = cache
        self.redirect = redirect  # told of each MOVED or ASK reply before its caller is (a Redis Cluster's reads)
        self._last_sent = 0.0
        self._heartbeat: asyncio.Task[None] | None = None
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None
        self._pending: list[tuple[Command, asyncio.Future[object]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def connected(self) -> bool:
        """Whether a connection is open now (else the next call connects, or connects again after a failure)."""
        return self._protocol is not None and not self._protocol.closed

    def call(self, *command: Arg) -> asyncio.Future[object]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((command, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)  # after the other requests already runnable in this turn
        return future

    def _flush(self) -> None:
        batch, self._pending, self._scheduled = self._pending, [], False
        protocol = self._protocol
        if protocol is not None and not protocol.closed:
            self._send(protocol, batch)
            return
        task = asyncio.get_running_loop().create_task(self._connect_and_send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect_and_send(self, batch: list[tuple[Command, asyncio.Future[object]]]) -> None:
        try:
            protocol = await self._connect()
        except Exception as exc:
            error: Exception
            if isinstance(exc, TimeoutError):
                # Slow or silent, not refused: a timeout, which callers do not retry (a retry would spend the
                # request's budget twice on a store that already took all of it).
                error = RedisTimeoutError(f"no answer from Redis within {self.timeout} s while connecting")
            elif isinstance(exc, RedisConnectionError):
                error = exc
            else:
                error = RedisConnectionError(f"Redis unreachable: {exc}")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        self._send(protocol, batch)

    async def _connect(self) -> _Protocol:
        # One connection attempt shared by every batch that needs it (no stampede after a restart).
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.get_running_loop().create_task(self._open())
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        host, port = (self.host, self.port) if self.locate is None else await self.locate()
        cache, redirect = self.cache, self.redirect
        _, protocol = await asyncio.wait_for(
            loop.create_connection(lambda: _Protocol(cache, redirect), host, port), timeout=self.timeout
        )
        setup: list[Command] = []
        if cache is not None:
            # RESP3, so that invalidations arrive on this connection, in order with the replies. NOLOOP: this
            # connection's own writes (an idle renewal's GETEX, which leaves the value as it was) do not
            # invalidate what it holds.
            hello: Command = ("HELLO", 3)
            if self.password:
                hello += ("AUTH", self.username or "default", self.password)
            setup += [hello, ("CLIENT", "TRACKING", "ON", "NOLOOP")]
        elif self.password:
            setup.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            setup.append(("SELECT", self.db))
        if self.locate is not None:
            # A Sentinel can be wrong (left behind in a partition, or not yet told of a failover): the
            # server itself must say it is the primary, or a revocation made on the real one is invisible.
            setup.append(("ROLE",))
        if setup:
            replies: list[asyncio.Future[object]] = [loop.create_future() for _ in setup]
            protocol.send(b"".join(pack(c) for c in setup), replies)
            try:
                for reply in replies:
                    await asyncio.wait_for(reply, timeout=self.timeout)
                if self.locate is not None and not is_primary(replies[-1].result()):
                    raise RedisConnectionError(f"{host}:{port} is not the primary")
            except BaseException:
                protocol.fail(RedisConnectionError("Redis refused the connection's setup"))
                raise
        self._protocol = protocol
        if cache is not None:
            cache.tracking_started()
            if self._heartbeat is None or self._heartbeat.done():
                self._heartbeat = loop.create_task(self._beat(cache))
        return protocol

    async def _beat(self, cache: NearCache) -> None:
        """While the connection is open: a PING whenever nothing was sent for a third of the cache's
        staleness, so that an idle replica's cache stays usable, and a silent connection stops it."""
        every = cache.staleness / 3
        while True:
            await asyncio.sleep(every)
            protocol = self._protocol
            if protocol is not None and not protocol.closed and time.perf_counter() - self._last_sent >= every:
                self.call("PING").add_done_callback(lambda f: f.exception())

    def _send(self, protocol: _Protocol, batch: list[tuple[Command, asyncio.Future[object]]]) -> None:
        futures = [future for _, future in batch]
        payload = b"".join(pack(command) for command, _ in batch)
        try:
            protocol.send(payload, futures)
        except Exception as exc:
            protocol.fail(RedisConnectionError(f"write to Redis failed: {exc}"))
            return
        timer = asyncio.get_running_loop().call_later(self.timeout, self._expire, protocol, futures)
        started = self._last_sent = time.perf_counter()
        observe = self.on_round_trip

        def answered(last: asyncio.Future[object]) -> None:
            # Replies arrive in order, so the last one answered means the whole batch was.
            if last.cancelled():
                return
            timer.cancel()
            if observe is not None and last.exception() is None:
                observe(time.perf_counter() - started)

        futures[-1].add_done_callback(answered)

    def _expire(self, protocol: _Protocol, futures: list[asyncio.Future[object]]) -> None:
        if any(not f.done() for f in futures):
            protocol.fail(RedisTimeoutError(f"no reply from Redis within {self.timeout} s"))

    async def aclose(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
