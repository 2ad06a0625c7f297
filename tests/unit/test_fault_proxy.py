"""The fault proxy on its own: its value parsers, and what each fault does to a real TCP exchange (an echo
server and the proxy in this process, on free loopback ports)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from scaleout.lab.faults import (
    Fault,
    FaultError,
    FaultProxy,
    applied_file,
    change,
    duration,
    rate,
    read_fault,
    write_fault,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_values_parse_strictly() -> None:
    assert (duration("500ms"), duration("2s"), duration("1.5s"), duration("40")) == (0.5, 2.0, 1.5, 0.04)
    assert (rate("10kb"), rate("1mb"), rate("300")) == (10240, 1024 * 1024, 300)
    for bad in ("soon", "-5ms", "90s", "1h", ""):
        with pytest.raises(FaultError):
            duration(bad)
    for bad in ("0", "fast", "1gb"):
        with pytest.raises(FaultError):
            rate(bad)


def test_faults_combine_and_clear() -> None:
    slow = change(Fault(), "latency", "50ms")
    jittery = change(slow, "jitter", "10ms")
    assert (jittery.latency_s, jittery.jitter_s) == (0.05, 0.01)
    assert change(jittery, "blackhole", None) == Fault(blackhole=True)  # silence replaces slowness
    assert change(jittery, "clear", None) == Fault()
    for kind, value in (("latency", None), ("blackhole", "1s"), ("flood", None)):
        with pytest.raises(FaultError):
            change(Fault(), kind, value)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
    except ConnectionResetError:
        pass  # the `reset` fault resets the proxy's upstream side too: this echo server's end, not the test's
    finally:
        writer.close()


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    upstream = echo.sockets[0].getsockname()[1]
    probe = await asyncio.start_server(_echo, "127.0.0.1", 0)  # only to get a free port for the proxy
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    state = tmp_path / "redis.json"
    task = asyncio.get_running_loop().create_task(
        FaultProxy(("127.0.0.1", port), ("127.0.0.1", upstream), state).serve()
    )
    for _ in range(100):  # until it listens
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            break
        except OSError:
            await asyncio.sleep(0.01)
    yield port, state
    task.cancel()
    echo.close()


async def _switch(state: Path, fault: Fault) -> None:
    write_fault(state, fault)
    for _ in range(200):
        if read_fault(applied_file(state)) == fault:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the proxy did not apply the fault")


async def _round_trip(port: int, timeout: float = 1.0) -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(b"ping")
    try:
        data = await asyncio.wait_for(reader.read(4), timeout)
    finally:
        writer.close()
    return data, time.monotonic() - started


@pytest.mark.anyio
async def test_latency_blackhole_reset_and_clear_on_a_real_exchange(proxy: tuple[int, Path]) -> None:
    port, state = proxy
    data, fast = await _round_trip(port)
    assert data == b"ping" and fast < 0.1
    await _switch(state, Fault(latency_s=0.15))
    data, slow = await _round_trip(port)
    assert data == b"ping" and 0.15 <= slow < 0.5
    await _switch(state, Fault(blackhole=True))
    with pytest.raises(TimeoutError):
        await _round_trip(port, timeout=0.3)  # accepted, never answered, never reset
    await _switch(state, Fault(reset=True))
    with pytest.raises((ConnectionResetError, AssertionError)):
        data, _ = await _round_trip(port)
        assert data, "an empty read is a closed connection"
    await _switch(state, Fault())
    data, fast = await _round_trip(port)
    assert data == b"ping" and fast < 0.1
