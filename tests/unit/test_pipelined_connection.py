"""The lean pipelined Redis connection (`scaleout.core.pipelined`): its documented failure rules, on the
standard event loop and on uvloop (which the services run)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable, Iterator

import pytest
import uvloop
from helpers import HOST, free_ports, wait_for_port
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from scaleout.core.pipelined import PipelinedConnection
from scaleout.lab.processes import require_program
from scaleout.lab.redisadmin import redis_args


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Awaitable[object]], object]:
    def runner(coro: Awaitable[object]) -> object:
        if request.param == "uvloop":
            return uvloop.run(coro)  # type: ignore[arg-type]
        return asyncio.run(coro)  # type: ignore[arg-type]

    return runner


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A redis-server that, like the cluster's, only lets its ACL user in."""
    (port,), _ = free_ports(1)
    directory = tmp_path_factory.mktemp("acl-redis")
    acl = directory / "users.acl"
    acl.write_text("user default off\nuser app on >s3cret-pass ~* &* +@all\n")
    proc = subprocess.Popen(
        [
            require_program("redis-server"),
            *redis_args(port),
            "--bind",
            HOST,
            "--dir",
            str(directory),
            "--aclfile",
            str(acl),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_commands_of_one_turn_share_a_round_trip_and_answer_in_order(run, redis_url: str) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])

    async def scenario() -> tuple[list[object], list[float]]:
        trips: list[float] = []
        conn = PipelinedConnection(HOST, port, on_round_trip=trips.append)
        await conn.call("SET", "resp:k", "v")
        replies = await asyncio.gather(
            *(conn.call("GET", "resp:k") for _ in range(20)), conn.call("EXISTS", "resp:nope")
        )
        await conn.aclose()
        return list(replies), trips

    replies, trips = run(scenario())  # type: ignore[misc]
    assert replies == [b"v"] * 20 + [0]
    assert len(trips) == 2  # the SET, then one write for all 21 commands


def test_an_error_reply_fails_only_its_own_caller(run, redis_url: str) -> None:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])

    async def scenario() -> list[object]:
        conn = PipelinedConnection(HOST, port)
        results = await asyncio.gather(
            conn.call("PING"), conn.call("NO-SUCH-COMMAND"), conn.call("PING"), return_exceptions=True
        )
        await conn.aclose()
        return list(results)

    ok, bad, ok2 = run(scenario())  # type: ignore[misc]
    assert ok == ok2 == b"PONG"
    assert isinstance(bad, ResponseError)


def test_nothing_listening_fails_every_waiting_caller_and_the_next_call_reconnects(run) -> None:
    (port,), _ = free_ports(1)

    async def scenario() -> tuple[list[object], object]:
        conn = PipelinedConnection(HOST, port, timeout=0.5)
        failed = await asyncio.gather(*(conn.call("PING") for _ in range(3)), return_exceptions=True)
        server = await asyncio.start_server(_answer_pong, HOST, port)  # now something answers
        try:
            later = await conn.call("PING")
        finally:
            server.close()
            await conn.aclose()
        return list(failed), later

    failed, later = run(scenario())  # type: ignore[misc]
    assert all(isinstance(f, RedisConnectionError) for f in failed)
    assert later == b"PONG"


def test_a_reply_later_than_the_timeout_fails_the_batch_and_drops_the_connection(run) -> None:
    (port,), _ = free_ports(1)

    async def scenario() -> tuple[list[object], int]:
        connections = 0

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            await reader.read(1024)  # reads the commands and never answers
            await asyncio.sleep(5)

        server = await asyncio.start_server(silent, HOST, port)
        conn = PipelinedConnection(HOST, port, timeout=0.2)
        try:
            first = await asyncio.gather(conn.call("PING"), conn.call("PING"), return_exceptions=True)
            second = await asyncio.gather(conn.call("PING"), return_exceptions=True)
        finally:
            await conn.aclose()
            server.close()
        return [*first, *second], connections

    results, connections = run(scenario())  # type: ignore[misc]
    assert all(isinstance(r, RedisTimeoutError) for r in results)
    assert connections == 2  # the stream could not be trusted after the timeout: a new connection


def test_a_connection_authenticates_before_any_caller_command(run, acl_redis: int) -> None:
    async def scenario() -> tuple[object, object, object]:
        anonymous = PipelinedConnection(HOST, acl_redis)
        wrong = PipelinedConnection(HOST, acl_redis, username="app", password="wrong")
        right = PipelinedConnection(HOST, acl_redis, username="app", password="s3cret-pass")
        results = await asyncio.gather(
            anonymous.call("GET", "k"), wrong.call("GET", "k"), right.call("PING"), return_exceptions=True
        )
        for c in (anonymous, wrong, right):
            await c.aclose()
        return tuple(results)  # type: ignore[return-value]

    anonymous, wrong, right = run(scenario())  # type: ignore[misc]
    assert isinstance(anonymous, ResponseError) and "NOAUTH" in str(anonymous)
    assert isinstance(wrong, RedisConnectionError)
    assert right == b"PONG"


async def _answer_pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(b"+PONG\r\n" * data.count(b"PING"))
        await writer.drain()
    writer.close()
