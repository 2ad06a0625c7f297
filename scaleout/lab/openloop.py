"""An open-loop load generator: requests at a fixed arrival rate, whatever the answers.

A closed-loop generator (wrk, a user loop) sends the next request when the last one answered, so an
overloaded server slows the generator down with it and the overload never shows. Here request i is due at
`start + i / rate`; it is sent then on an idle keep-alive connection (a new one when none is idle). Each
request keeps when it was due and when it was actually sent: the server's latency counts from the sending,
the wait anybody saw from when it was due (a generator that falls behind cannot hide waiting: no
coordinated omission), and the difference is the generator's own lag, reported apart. Every request has a
deadline, counted from when it was due; one not answered by then is a timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from scaleout.lab.load import percentile


@dataclass(frozen=True, slots=True)
class Shot:
    due: float  # seconds from the run's start
    status: int  # HTTP status; 0: no answer by the deadline, -1: the connection failed, -2: a 503 not saying when
    latency: float  # seconds from when it was due to its answer (or to the deadline)
    lag: float = 0.0  # seconds from when it was due to when this generator sent it


@dataclass
class OpenLoopRun:
    offered_rate: float
    seconds: float
    shots: list[Shot] = field(default_factory=list)

    def statuses(self) -> dict[str, int]:
        names = {0: "timeout", -1: "connection error", -2: "503 without Retry-After"}
        return dict(sorted(Counter(names.get(s.status, str(s.status)) for s in self.shots).items()))

    def admitted(self) -> list[Shot]:
        return [s for s in self.shots if s.status == 200]

    def admitted_rate(self) -> float:
        return len(self.admitted()) / self.seconds

    def admitted_ms(self, q: float) -> float:
        """The server's latency for the requests it admitted: from the sending to the answer."""
        return round(percentile([(s.latency - s.lag) * 1000 for s in self.admitted()], q), 2)

    def describe(self) -> str:
        """One line for a log: what was offered, what was admitted and how fast, every answer's kind."""
        return (
            f"offered {self.offered_rate:.0f}/s: admitted {self.admitted_rate():.0f}/s, p50 {self.admitted_ms(0.5)} "
            f"ms, p99 {self.admitted_ms(0.99)} ms, slowest {self.slowest_ms()} ms, {self.statuses()}, "
            f"generator lag p99 {self.lag_ms(0.99)} ms"
        )

    def lag_ms(self, q: float) -> float:
        """How late this generator sent its requests (it shares the machine with the cluster)."""
        return round(percentile([s.lag * 1000 for s in self.shots], q), 2)

    def slowest_ms(self) -> float:
        return round(max((s.latency for s in self.shots), default=0.0) * 1000, 2)


class Pool:
    """Idle keep-alive connections to one address, opened on demand."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = deque()

    async def get(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self.idle:
            reader, writer = self.idle.pop()
            if not writer.is_closing():
                return reader, writer
        return await asyncio.open_connection(self.host, self.port)

    def put(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.idle.append(conn)

    def drop(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        conn[1].close()

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bool]:
    """One request on a keep-alive connection: its status, and whether the connection may be reused."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, reusable, retry_after = 0, True, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            reusable = False
        elif name == b"retry-after":
            retry_after = True
    if length:
        await reader.readexactly(length)
    return (-2 if status == 503 and not retry_after else status), reusable


async def offer(
    host: str,
    port: int,
    path: str,
    rate: float,
    seconds: float,
    headers: dict[str, str] | None = None,
    deadline: float = 1.0,
) -> OpenLoopRun:
    """`rate` GET requests per second to `path` for `seconds`, whatever the answers."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    pool = Pool(host, port)
    run = OpenLoopRun(rate, seconds)
    loop = asyncio.get_running_loop()
    start = loop.time()  # the deadlines' clock (the loop's own, coarse under uvloop)
    t0 = time.perf_counter()  # the measurements' clock, a fine one, started at the same moment
    tasks: set[asyncio.Task[None]] = set()

    async def fire(due: float) -> None:
        conn = None
        lag = max(0.0, time.perf_counter() - t0 - due)
        try:
            async with asyncio.timeout_at(start + due + deadline):
                conn = await pool.get()
                status, reusable = await exchange(*conn, request)
            run.shots.append(Shot(due, status, time.perf_counter() - t0 - due, lag))
            if reusable:
                pool.put(conn)
            else:
                pool.drop(conn)
        except TimeoutError:
            run.shots.append(Shot(due, 0, deadline, lag))
            if conn is not None:
                pool.drop(conn)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            run.shots.append(Shot(due, -1, time.perf_counter() - t0 - due, lag))
            if conn is not None:
                pool.drop(conn)

    total = int(rate * seconds)
    sent = 0
    while sent < total:
        now = loop.time() - start
        due_now = min(total, int(now * rate) + 1)
        while sent < due_now:  # everything due by now, each stamped with when it was due
            task = loop.create_task(fire(sent / rate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.sleep(max(0.0, sent / rate - (loop.time() - start)))
    if tasks:
        await asyncio.gather(*tasks)
    pool.close()
    run.shots.sort(key=lambda s: s.due)
    return run
