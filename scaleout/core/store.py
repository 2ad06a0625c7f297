"""The shared Redis: one client per process, the lean pipelined read connection, and what "acknowledged"
means (`Durability`). The shared state built on it lives beside: `sessions.py`, `revocation.py` (denylist,
refresh families), `throttle.py`.

Every failure to reach Redis becomes `StoreUnavailable`, which the services turn into 503: a store that is
down never lets anybody in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

from scaleout.core.config import SessionCache, Settings
from scaleout.core.nearcache import NearCache
from scaleout.core.pipelined import Arg, PipelinedConnection, is_primary


class StoreUnavailable(Exception):
    pass


T = TypeVar("T")


class AppConnection(Connection):
    """A write on a connection the peer reset: uvloop raises RuntimeError ("the handler is closed") where the
    standard loop raises an OSError. redis-py has already dropped the connection; calling it a connection
    error lets `redis_call` retry once on a fresh one (and answer 503 if that fails too), never a 500."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except RuntimeError as exc:
            raise RedisConnectionError(f"the connection was closed under us: {exc}") from exc


class PrimaryConnection(AppConnection, SentinelManagedConnection):
    """A connection to the primary the Sentinels named, which must say so itself (`ROLE`) before it is used:
    a Sentinel left behind in a partition can name an old primary, where a revocation made on the new one
    is invisible."""

    async def connect_to(self, address: tuple[str, int]) -> None:
        await super().connect_to(address)  # type: ignore[no-untyped-call]
        if self.connection_pool.is_master:
            await self.send_command("ROLE")
            if not is_primary(await self.read_response()):
                await self.disconnect()
                raise RedisConnectionError(f"{address[0]}:{address[1]} is not the primary")


def make_redis(settings: Settings) -> Redis:
    """An async client with a connection pool; hiredis parses replies when installed.

    Short timeouts and no retries of its own (see `redis_call`): when Redis is down a request fails fast
    with 503, and the pool reconnects by itself once Redis is back. Every connection authenticates as the
    cluster's ACL user: the cluster's Redis refuses anonymous clients.
    """
    password = settings.redis_password()
    common: dict[str, Any] = {
        "username": settings.redis_username if password else None,
        "password": password,
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }
    if settings.sentinel:
        # The primary is whichever the Sentinels name now: found on connect, found again after a
        # connection breaks or a demoted primary answers READONLY (redis-py's Sentinel pool does both).
        sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py's Sentinel has no annotations
            settings.sentinel_hosts,
            # Agreement: a Sentinel that knows no other Sentinel is not believed (Redis' client guidance).
            min_other_sentinels=1,
            sentinel_kwargs={
                "username": settings.redis_username if password else None,  # a user that may only ask
                "password": password,
                "socket_timeout": settings.redis_timeout,
                "socket_connect_timeout": settings.redis_timeout,
            },
            **common,
        )
        primary: Redis = sentinel.master_for(
            settings.sentinel_master, max_connections=256, connection_class=PrimaryConnection
        )
        return primary
    return Redis.from_url(settings.redis_dsn, max_connections=256, connection_class=AppConnection, **common)


def make_store(settings: Settings) -> Store:
    """The store of the cluster's topology, chosen once at start-up: one Redis, the primary the Sentinels
    name, or the shards of a Redis Cluster."""
    durability = Durability.of(settings)
    if settings.cluster:
        from scaleout.core.cluster import ClusterStore  # it builds on this module

        return ClusterStore(settings, durability)
    return Store(make_redis(settings), durability)


class NotReplicated(StoreUnavailable):
    """A write no replica acknowledged in time: it may not survive a failover, so it is not confirmed."""


class Durability:
    """Writes the user is told about (a login, a logout, a revocation, a spent refresh token) are confirmed
    only once `replicas` replicas have them (`WAIT` on the same connection, right after the write)."""

    def __init__(self, replicas: int = 0, timeout_ms: int = 500, settle: float = 0.0) -> None:
        self.replicas = replicas
        self.timeout_ms = timeout_ms
        # SESSION_CACHE=tracking: a revocation is confirmed only after the replicas' near-caches can no
        # longer serve what it revoked, even one whose invalidation stream went silent (a cache is trusted
        # for `staleness` after the send time of its last answered command; see `nearcache`).
        self.settle = settle

    @classmethod
    def of(cls, settings: Settings) -> Durability:
        settle = settings.session_cache_staleness if settings.session_cache == SessionCache.tracking else 0.0
        replicated = settings.sentinel or settings.cluster  # a single Redis has no replica to wait for
        return cls(settings.redis_wait_replicas if replicated else 0, settings.redis_wait_ms, settle)


Build = Callable[[Any], Awaitable[object]]
# An operation on the client of a key's shard; `asking`: send ASKING first (the slot is being moved there).
Op = Callable[[Redis, bool], Awaitable[T]]


class Store:
    """The shared Redis as the state classes use it: every operation names a key, and runs as one pipeline
    on the Redis that holds the key's slot. One Redis (or the primary the Sentinels name) holds them all;
    `ClusterStore` finds the shard.
    """

    def __init__(self, redis: Redis, durability: Durability | None = None) -> None:
        self.redis = redis
        self.durability = durability or Durability()

    def script(self, source: str) -> AsyncScript:
        """A Lua script, always run through `run`'s pipeline (so on the key's shard)."""
        return self.redis.register_script(source)

    async def route(self, key: str, op: Op[T], what: str) -> T:
        """Run `op` on the client for `key`; see `redis_call` for the failure rules."""
        return await redis_call(lambda: op(self.redis, False), what)

    async def run(
        self,
        key: str,
        build: Build,
        what: str = "shared store unavailable",
        durable: bool = False,
        revokes: bool = False,
        transaction: bool = False,
    ) -> list[Any]:
        """Queue commands on one pipeline to `key`'s shard; their replies. `durable`: the write is confirmed
        only once `Durability` says so (WAIT on the same connection). `revokes`: it ends a session or denies
        a token, so it also waits out the near-caches' staleness. Every key the commands name must share
        `key`'s slot (`keyspace`)."""
        wait = self.durability.replicas if durable else 0

        async def op(client: Redis, asking: bool) -> list[Any]:
            async with client.pipeline(transaction=transaction) as pipe:
                if asking:
                    pipe.execute_command("ASKING")
                await build(pipe)
                if wait:
                    pipe.wait(wait, self.durability.timeout_ms)
                results: list[Any] = await pipe.execute()
            if asking:
                results = results[1:]
            if wait:
                if int(results[-1]) < wait:
                    raise NotReplicated(f"{what}: no replica confirmed the write")
                results = results[:-1]
            return results

        results = await self.route(key, op, what)
        if revokes and self.durability.settle:
            await asyncio.sleep(self.durability.settle)
        return results

    def reads(
        self, on_round_trip: Callable[[float], None] | None = None, caches: Callable[[], NearCache] | None = None
    ) -> Reads:
        """The per-request reads of this process (see `Coalescer`); `caches` makes the near-cache of each
        read connection, when it is on."""
        return Coalescer(self.redis, on_round_trip, caches() if caches else None)

    async def answers(self) -> bool:
        """Whether the shared Redis answers now (a readiness probe's question; never raises)."""
        return await answers(self.redis)

    async def aclose(self) -> None:
        await self.redis.aclose()


async def redis_call(op: Callable[[], Awaitable[T]], what: str = "shared store unavailable") -> T:
    """Run one Redis operation; a dead connection is retried once, any other failure is StoreUnavailable.

    After a Redis restart every pooled connection is dead, and redis-py raises on the first use of each
    instead of reconnecting; one retry on a fresh connection heals that without failing a request.
    """
    try:
        try:
            return await op()
        except RedisConnectionError:
            return await op()
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(what) from exc


class Reads(Protocol):
    """The per-request reads: each command's reply as a future; commands issued in one event-loop turn
    share one write and one round trip per Redis."""

    def cache_for(self, key: str) -> NearCache | None:
        """The near-cache that may answer for `key` (None when it is off): the one kept in step by the
        connection `key` is read on."""
        ...

    def call(self, *command: Arg) -> asyncio.Future[object]: ...

    async def aclose(self) -> None: ...


class Coalescer(PipelinedConnection):
    """The per-request reads of one process, pipelined on one lean connection to the client's Redis.

    Under load a replica has many requests waiting on Redis at once; commands issued in one event-loop
    turn share one write and one round trip (see `scaleout.core.pipelined`).
    """

    def __init__(
        self, redis: Redis, on_round_trip: Callable[[float], None] | None = None, cache: NearCache | None = None
    ) -> None:
        pool = redis.connection_pool
        kw = pool.connection_kwargs
        super().__init__(
            kw.get("host", "127.0.0.1"),
            kw.get("port", 6379),
            kw.get("db", 0),
            kw.get("socket_timeout") or 0.5,
            on_round_trip=on_round_trip,
            username=kw.get("username"),
            password=kw.get("password"),
            # Behind Sentinels, every (re)connection asks them where the primary is now.
            locate=pool.get_master_address if isinstance(pool, SentinelConnectionPool) else None,
            cache=cache,
        )

    def cache_for(self, key: str) -> NearCache | None:
        return self.cache


async def answers(redis: Redis) -> bool:
    """Whether the shared Redis answers now (a readiness probe's question; never raises)."""
    try:
        return bool(await redis_call(redis.ping))
    except StoreUnavailable:
        return False
