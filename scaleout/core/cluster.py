"""The shared store on a Redis Cluster: each key's slot is held by one of several primaries (shards).

The services find a key's shard themselves, from the slot map (`CLUSTER SLOTS`, asked of any node), and
follow the cluster's redirections: `MOVED` (the slot lives elsewhere now: a reshard finished, or a failover
promoted a replica) re-points the slot at once and re-reads the map soon; `ASK` (the slot is being moved,
and this key already went) sends `ASKING` and the command to the node named, once. Writes go through a
redis-py client per primary, so that a write and its `WAIT` share a connection (redis-py's `RedisCluster`
would send the `WAIT`, which names no key, to any node). Reads go through one lean pipelined connection per
primary (`scaleout.core.pipelined`): still one round trip per request, since every key a request reads is in
one slot (`keyspace`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import AskError, MovedError, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from scaleout.core.config import Settings
from scaleout.core.nearcache import NearCache
from scaleout.core.pipelined import Arg, PipelinedConnection, Redirected
from scaleout.core.store import AppConnection, Durability, Op, Reads, Store, StoreUnavailable, T

Address = tuple[str, int]
# How often the slot map may be re-read on failures: while a shard's primary is down, every request to it
# fails, and one re-read per interval is enough to see the replica promoted.
REFRESH_INTERVAL = 0.2
MAX_REDIRECTIONS = 3
# How long a slot a node said ASK for takes the careful read path (a reshard moves a slot in milliseconds to
# seconds; after it, MOVED re-points the slot for good).
MIGRATION_MEMORY = 10.0


def slot_of(key: str | bytes) -> int:
    return key_slot(key.encode() if isinstance(key, str) else key)


class ClusterStore(Store):
    """The cluster's primaries, one redis-py client each, and the slot map that says which holds a key."""

    def __init__(self, settings: Settings, durability: Durability | None = None) -> None:
        self.startup = settings.cluster_hosts
        password = settings.redis_password()
        self.username = settings.redis_username if password else None
        self.password = password
        self.timeout = settings.redis_timeout
        self._clients: dict[Address, Redis] = {}
        self._slots: list[Address | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        self._refreshing: asyncio.Task[bool] | None = None
        self._refreshed_at = 0.0
        self._listeners: list[Callable[[], None]] = []  # told when a slot moved to another node
        super().__init__(self.client(self.startup[0]), durability)

    def client(self, address: Address) -> Redis:
        found = self._clients.get(address)
        if found is None:
            # As `make_redis`: short timeouts, no retries of its own, the services' ACL user.
            options: dict[str, Any] = {
                "host": address[0],
                "port": address[1],
                "username": self.username,
                "password": self.password,
                "socket_timeout": self.timeout,
                "socket_connect_timeout": self.timeout,
                "retry": Retry(NoBackoff(), 0),
                "health_check_interval": 0,
            }
            pool = ConnectionPool(connection_class=AppConnection, max_connections=256, **options)
            found = self._clients[address] = Redis(connection_pool=pool)
        return found

    # --- the slot map ---------------------------------------------------------------------------

    def address(self, slot: int) -> Address | None:
        return self._slots[slot]

    def moved(self, slot: int, address: Address) -> None:
        """A node said `MOVED`: the slot is served there now; the rest of the map may have changed too."""
        if self._slots[slot] != address:
            self._slots[slot] = address
            self._changed()
        self.refresh_soon()

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def primaries(self) -> list[Address]:
        return sorted({a for a in self._slots if a is not None})

    async def refresh(self) -> bool:
        """Read the slot map again (one reading at a time, shared by whoever asks meanwhile)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshed_at = time.monotonic()
            self._refreshing = asyncio.get_running_loop().create_task(self._read_map())
        return await asyncio.shield(self._refreshing)

    async def _read_map(self) -> bool:
        """The slot map from whichever node answers first, all asked at once (the primaries known and the
        start-up list): a node that just died may not answer at all until a timeout (a container's address
        gone), and its name may take Docker's DNS seconds; asking in turn would wait for each."""
        asks = [asyncio.ensure_future(self._slots_of(a)) for a in dict.fromkeys([*self.primaries(), *self.startup])]
        try:
            for answered in asyncio.as_completed(asks):
                slots = await answered
                if slots is None:
                    continue
                if slots != self._slots:
                    self._slots = slots
                    self._changed()
                return True
            return False
        finally:
            for ask in asks:
                ask.cancel()

    async def _resolved(self, address: Address) -> Address | None:
        """A start-up name's IP address now, or None when the name does not resolve in time (a stopped
        container's). The lookup runs on its own, shielded, and its outcome is always collected: a caller
        cancelled just as its lookup fails (another node answered first, or the timeout) leaves the failure
        unretrieved, which asyncio logs as "Future exception was never retrieved" (seen on every map reading
        while a swarm's node was stopped)."""
        host, port = address
        try:
            ipaddress.ip_address(host)
            return address
        except ValueError:
            pass
        lookup = asyncio.ensure_future(asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM))
        lookup.add_done_callback(_ignore)
        try:
            found = await asyncio.wait_for(asyncio.shield(lookup), self.timeout)
        except OSError:  # TimeoutError too
            return None
        return (str(found[0][4][0]), port) if found else None

    async def _slots_of(self, named: Address) -> list[Address | None] | None:
        address = await self._resolved(named)
        if address is None:
            return None
        try:
            reply = await self.client(address).execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
        except (RedisError, OSError):
            return None
        slots: list[Address | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        for start, end, primary, *_ in reply:
            host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
            # A node that does not know its own address says "" or "?": it is the one that answered.
            owner = (host if host not in ("", "?") else address[0], int(primary[1]))
            for slot in range(int(start), int(end) + 1):
                slots[slot] = owner
        return slots

    def refresh_soon(self) -> None:
        """Re-read the map in the background, at most once per REFRESH_INTERVAL (failures call this often)."""
        if self._refreshing is not None and not self._refreshing.done():
            return
        if time.monotonic() - self._refreshed_at < REFRESH_INTERVAL:
            return
        self._refreshed_at = time.monotonic()
        self._refreshing = asyncio.get_running_loop().create_task(self._read_map())

    # --- operations -----------------------------------------------------------------------------

    async def route(self, key: str, op: Op[T], what: str) -> T:
        """Run `op` on the primary of `key`'s slot, following `MOVED` and `ASK`; a dead connection is tried
        once more (after a restart every pooled connection is dead), any other failure is StoreUnavailable."""
        slot = slot_of(key)
        ask: Address | None = None
        retried = False
        try:
            for _ in range(MAX_REDIRECTIONS + 1):
                address = ask or self._slots[slot]
                if address is None:
                    await self.refresh()
                    address = self._slots[slot]
                    if address is None:
                        raise StoreUnavailable(f"{what}: no shard serves slot {slot}")
                try:
                    return await op(self.client(address), ask is not None)
                except MovedError as e:
                    self.moved(e.slot_id, (e.host, e.port))
                    ask = None
                except AskError as e:
                    ask = (e.host, e.port)
                except TryAgainError:
                    # A multi-key command met a slot whose keys are half moved: the move takes milliseconds.
                    await asyncio.sleep(0.05)
                    ask = None
                except (RedisConnectionError, RedisTimeoutError) as exc:
                    # The shard's primary may have changed (a failover): look again, for the next request.
                    self.refresh_soon()
                    if retried or isinstance(exc, RedisTimeoutError):  # a timeout spent the budget already
                        raise
                    retried = True
            raise StoreUnavailable(f"{what}: redirected more than {MAX_REDIRECTIONS} times")
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(what) from exc

    def reads(
        self, on_round_trip: Callable[[float], None] | None = None, caches: Callable[[], NearCache] | None = None
    ) -> Reads:
        reads = ClusterReads(self, on_round_trip, caches)
        self._listeners.append(reads.forget)
        return reads

    async def answers(self) -> bool:
        """Whether the cluster answers now: the slot map could be read. A shard that is down does not make
        the whole cluster unready: the other shards' keys are served."""
        return await self.refresh()

    async def aclose(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        for client in self._clients.values():
            await client.aclose()


def _ignore(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class ClusterReads:
    """The per-request reads on a Redis Cluster: one lean pipelined connection per primary, each command
    sent to its key's shard (the key is the command's first argument).

    The common case costs what one Redis costs: the caller awaits the connection's own future. A `MOVED`
    reply re-points the slot before its caller hears of it (as `Redirected`, a connection error its one
    retry answers, now to the right shard). An `ASK` reply marks the slot as being moved: for a while its
    keys take the careful path, which sends a key that already went (`ASK` again) to the node named, after
    `ASKING`, and only that key (a key not moved yet would be missing there).

    With the near-cache on, each connection keeps its own (`caches` makes them): Redis invalidates a key on the
    connection that read it, so an answer is served only by the cache of the stream its invalidation would
    come on. When a slot moves (a reshard, a failover), a key may be read on another connection than before
    and its old shard stops telling of it: every cache forgets what it holds, before the reply that said so
    reaches anybody, so a read in flight across the move is not kept either."""

    def __init__(
        self,
        store: ClusterStore,
        on_round_trip: Callable[[float], None] | None = None,
        caches: Callable[[], NearCache] | None = None,
    ) -> None:
        self.store = store
        self.on_round_trip = on_round_trip
        self.caches = caches
        self._connections: dict[Address, PipelinedConnection] = {}
        self._migrating: dict[int, float] = {}  # slot -> when a node last said ASK for it
        self._slots: dict[Arg, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _connection(self, address: Address) -> PipelinedConnection:
        found = self._connections.get(address)
        if found is None:
            s = self.store
            cache = self.caches() if self.caches else None
            found = self._connections[address] = PipelinedConnection(
                address[0],
                address[1],
                0,
                s.timeout,
                self.on_round_trip,
                s.username,
                s.password,
                cache=cache,
                redirect=self._redirected,
            )
        return found

    def cache_for(self, key: str) -> NearCache | None:
        if self.caches is None:
            return None
        address = self.store.address(slot_of(key))
        return None if address is None else self._connection(address).cache

    def forget(self) -> None:
        """A slot moved: no cache may answer for what it read before (the connection stays tracking)."""
        for connection in self._connections.values():
            if connection.cache is not None:
                connection.cache.invalidate(None)

    def _redirected(self, message: str) -> None:
        """A connection read `MOVED <slot> <host:port>` or `ASK ...`, and is about to fail its caller."""
        kind, slot_text, node = message.split(" ", 2)
        host, _, port = node.rpartition(":")
        self.forget()
        if kind == "MOVED":
            self.store.moved(int(slot_text), (host, int(port)))
        else:
            self._migrating[int(slot_text)] = time.monotonic()

    def call(self, *command: Arg) -> asyncio.Future[object]:
        # The per-request path: a key's slot is remembered (a replica reads the same sessions over and over).
        key = command[1]
        slot = self._slots.get(key)
        if slot is None:
            slot = slot_of(key if isinstance(key, str | bytes) else str(key))
            if len(self._slots) >= 100_000:
                self._slots.clear()
            self._slots[key] = slot
        address = self.store.address(slot)
        if address is not None and not (self._migrating and self._moving(slot)):
            connection = self._connections.get(address) or self._connection(address)
            if not connection.connected:  # never yet, or it failed: the shard's primary may have changed
                self.store.refresh_soon()
            return connection.call(*command)
        reply: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._send(reply, command, slot, None, 0)
        return reply

    def _moving(self, slot: int) -> bool:
        said = self._migrating.get(slot)
        if said is None:
            return False
        if time.monotonic() - said < MIGRATION_MEMORY:
            return True
        del self._migrating[slot]
        return False

    def _send(
        self, reply: asyncio.Future[object], command: tuple[Arg, ...], slot: int, ask: Address | None, hops: int
    ) -> None:
        address = ask or self.store.address(slot)
        if address is None:
            if hops < MAX_REDIRECTIONS:  # not known yet (the first request), or a shard lost: ask, then send
                task = asyncio.get_running_loop().create_task(self._after_refresh(reply, command, slot, hops + 1))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                reply.set_exception(RedisConnectionError("no shard serves this key's slot"))
            return
        connection = self._connection(address)
        if ask is not None:
            connection.call("ASKING").add_done_callback(_ignore)  # same connection, same write: just before
        connection.call(*command).add_done_callback(lambda f: self._answered(reply, f, command, slot, hops))

    async def _after_refresh(
        self, reply: asyncio.Future[object], command: tuple[Arg, ...], slot: int, hops: int
    ) -> None:
        await self.store.refresh()
        if not reply.done():
            self._send(reply, command, slot, None, hops)

    def _answered(
        self,
        reply: asyncio.Future[object],
        answer: asyncio.Future[object],
        command: tuple[Arg, ...],
        slot: int,
        hops: int,
    ) -> None:
        if reply.done():
            return
        if answer.cancelled():
            reply.cancel()
            return
        exc = answer.exception()
        if exc is None:
            reply.set_result(answer.result())
            return
        if isinstance(exc, Redirected) and hops < MAX_REDIRECTIONS:
            kind, _, rest = str(exc).partition(" ")
            if kind == "MOVED":  # the map says where now (`_redirected` re-pointed it)
                self._send(reply, command, slot, None, hops + 1)
            else:
                host, _, port = rest.partition(" ")[2].rpartition(":")
                self._send(reply, command, slot, (host, int(port)), hops + 1)
            return
        if isinstance(exc, RedisConnectionError | RedisTimeoutError):
            self.store.refresh_soon()
        reply.set_exception(exc)

    async def aclose(self) -> None:
        for connection in self._connections.values():
            await connection.aclose()
