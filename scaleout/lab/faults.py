"""The fault proxy: a TCP proxy between the services and Redis, or between the replicas and the auth service,
that adds latency, jitter, a bandwidth cap, a blackhole or resets, switched while it runs.

What production meets is rarely "down" (a refused connection, which the services already answer with 503)
but slow, or silent: packets that vanish with no reset. Toxiproxy is the model; its server is not
installable here, so this is a small asyncio proxy of our own. `scaleout fault redis latency 500ms` writes
the wanted fault to `<cluster>/faults/redis.json`; the proxy watches that file and applies it to the
connections it carries and the ones it accepts next, without restarting anything.

Faults:
- `latency VALUE`: each chunk from the upstream reaches the client VALUE later (order kept; a round trip
  takes VALUE longer, whatever else is in flight), `jitter VALUE` adds up to VALUE more at random;
- `bandwidth VALUE`: bytes per second in each direction (`10kb`, `1mb`);
- `blackhole`: connections are accepted and everything sent is swallowed, nothing answers, nothing resets;
- `reset`: every connection is reset (RST), the ones open now and each new one;
- `clear`: none of the above.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import socket
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path

KINDS = ("latency", "jitter", "bandwidth", "blackhole", "reset", "clear")
TARGETS = ("redis", "auth")
CHUNK = 64 * 1024
WATCH_EVERY = 0.02  # seconds between looks at the fault file: a switch takes effect within this


class FaultError(ValueError):
    """A fault that cannot be: an unknown kind, or a value of the wrong shape (one line for the user)."""


@dataclass(frozen=True, slots=True)
class Fault:
    latency_s: float = 0.0
    jitter_s: float = 0.0
    bandwidth_bps: int = 0  # 0: no cap
    blackhole: bool = False
    reset: bool = False

    def describe(self) -> str:
        parts = []
        if self.latency_s:
            parts.append(f"latency {self.latency_s * 1000:g}ms")
        if self.jitter_s:
            parts.append(f"jitter {self.jitter_s * 1000:g}ms")
        if self.bandwidth_bps:
            parts.append(f"bandwidth {self.bandwidth_bps}B/s")
        if self.blackhole:
            parts.append("blackhole")
        if self.reset:
            parts.append("reset")
        return ", ".join(parts) or "none"


def duration(value: str) -> float:
    """`500ms`, `2s`, `1.5s` or a bare number of milliseconds, in seconds; at most 60 s."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)?", value.strip())
    if m is None:
        raise FaultError(f"VALUE={value!r}: a duration such as 500ms or 2s")
    seconds = float(m.group(1)) / (1 if m.group(2) == "s" else 1000)
    if seconds > 60:
        raise FaultError(f"VALUE={value!r}: at most 60s")
    return seconds


def rate(value: str) -> int:
    """`10kb`, `1mb` or a bare number of bytes, per second; at least 1 byte."""
    m = re.fullmatch(r"(\d+)(b|kb|mb)?", value.strip().lower())
    if m is None or int(m.group(1)) < 1:
        raise FaultError(f"VALUE={value!r}: a rate such as 10kb or 1mb (per second)")
    return int(m.group(1)) * {"b": 1, "kb": 1024, "mb": 1024 * 1024}[m.group(2) or "b"]


def change(current: Fault, kind: str, value: str | None) -> Fault:
    """`current` with one fault added (`latency`, `jitter` and `bandwidth` combine), or all cleared."""
    if kind not in KINDS:
        raise FaultError(f"KIND={kind!r}: one of {', '.join(KINDS)}")
    needs_value = kind in ("latency", "jitter", "bandwidth")
    if needs_value and not value:
        raise FaultError(f"KIND={kind} needs a VALUE (for example {'10kb' if kind == 'bandwidth' else '500ms'})")
    if not needs_value and value:
        raise FaultError(f"KIND={kind} takes no VALUE")
    if kind == "clear":
        return Fault()
    if kind == "latency":
        return Fault(duration(value or ""), current.jitter_s, current.bandwidth_bps)
    if kind == "jitter":
        return Fault(current.latency_s, duration(value or ""), current.bandwidth_bps)
    if kind == "bandwidth":
        return Fault(current.latency_s, current.jitter_s, rate(value or ""))
    return Fault(blackhole=kind == "blackhole", reset=kind == "reset")


def fault_file(cluster_dir: Path, target: str) -> Path:
    return cluster_dir / "faults" / f"{target}.json"


def applied_file(state: Path) -> Path:
    return state.with_name(f"{state.stem}.applied.json")


def read_fault(path: Path) -> Fault:
    try:
        return Fault(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return Fault()


def write_fault(path: Path, fault: Fault) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(asdict(fault)))
    tmp.replace(path)  # the proxy never reads half a file


class FaultProxy:
    """Listens on `listen`, forwards to `upstream`, applying whatever `state` (a fault file) says now."""

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int], state: Path) -> None:
        self.listen = listen
        self.upstream = upstream
        self.state = state
        self.fault = read_fault(state)
        self._seen: float | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def serve(self) -> None:
        server = await asyncio.start_server(self._accept, *self.listen, reuse_address=True)
        async with server:
            await self._watch()

    async def _watch(self) -> None:
        while True:
            try:
                mtime: float | None = self.state.stat().st_mtime_ns / 1e9
            except OSError:
                mtime = None
            if mtime != self._seen:
                self._seen = mtime
                self.fault = read_fault(self.state)
                if self.fault.reset:
                    for writer in list(self._open):
                        _reset(writer)
                    await asyncio.sleep(0)  # an aborted transport closes its socket on the loop's next turn
                write_fault(applied_file(self.state), self.fault)  # `scaleout fault` returns once it is in effect
            await asyncio.sleep(WATCH_EVERY)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.fault.reset:
            _reset(writer)
            return
        self._open.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            self._open.add(up_writer)
            await asyncio.gather(self._pump(reader, up_writer, False), self._pump(up_reader, writer, True))
        except OSError:
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    self._open.discard(w)
                    w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, answers: bool) -> None:
        """One direction. Chunks are stamped when they arrive and delivered at stamp + latency by a second
        task, so latency does not add up under load; `answers`: the upstream-to-client direction."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        delivery = asyncio.get_running_loop().create_task(self._deliver(queue, dst))
        try:
            while data := await src.read(CHUNK):
                f = self.fault
                if f.blackhole:
                    continue  # swallowed: the other side waits for ever, as behind a dropped route
                delay = (f.latency_s + random.uniform(0, f.jitter_s)) if answers else 0.0
                queue.put_nowait((time.monotonic() + delay, data))
            await queue.join()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            delivery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await delivery
            if not dst.is_closing():
                with contextlib.suppress(OSError):
                    dst.write_eof()

    async def _deliver(self, queue: asyncio.Queue[tuple[float, bytes]], dst: asyncio.StreamWriter) -> None:
        while True:
            due, data = await queue.get()
            try:
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self.fault.blackhole:
                    continue
                dst.write(data)
                await dst.drain()
                cap = self.fault.bandwidth_bps
                if cap:
                    await asyncio.sleep(len(data) / cap)
            except OSError:
                return
            finally:
                queue.task_done()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (RST), as a peer that crashed or a middlebox that gave up does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def set_fault(state: Path, kind: str, value: str | None, timeout: float = 5.0) -> Fault:
    """Change the fault a proxy watching `state` applies; returns it once the proxy says it applies it, so a
    caller measuring the fault measures the fault. TimeoutError: the proxy did not take it (not running)."""
    now = change(read_fault(state), kind, value)
    write_fault(state, now)
    deadline = time.monotonic() + timeout
    while read_fault(applied_file(state)) != now:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the fault proxy watching {state} did not take the fault within {timeout:g} s")
        time.sleep(WATCH_EVERY)
    return now


def main(argv: list[str] | None = None) -> None:
    """`--listen A --upstream B --state F`: run a proxy. `--state F --set KIND [VALUE]`: switch the fault of
    the proxy watching F (in a container, where the compose driver runs it with `docker compose exec`) and
    print the fault now in effect as JSON."""
    parser = argparse.ArgumentParser(prog="python -m scaleout.lab.faults", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", help="host:port")
    parser.add_argument("--upstream", help="host:port")
    parser.add_argument("--state", required=True, type=Path, help="the fault file to watch")
    parser.add_argument("--set", nargs="+", metavar="KIND [VALUE]", help="switch the fault, then exit")
    args = parser.parse_args(argv)
    os.umask(0o077)
    if args.set:
        try:
            now = set_fault(args.state, args.set[0], args.set[1] if len(args.set) > 1 else None)
        except FaultError as e:
            parser.exit(2, f"{e}\n")
        except TimeoutError as e:
            parser.exit(1, f"{e}\n")
        print(json.dumps(asdict(now)))
        return
    if not (args.listen and args.upstream):
        parser.error("a proxy needs --listen and --upstream")

    def address(value: str) -> tuple[str, int]:
        host, _, port = value.rpartition(":")
        return host, int(port)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(FaultProxy(address(args.listen), address(args.upstream), args.state).serve())


if __name__ == "__main__":
    main()
