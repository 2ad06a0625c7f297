"""The panel's traffic generator: K simulated users who log in and loop on `GET /api/me` through nginx.

Each user has its own client (cookie jar or token) and its own source address (127.0.N.2: one /24 each, so
`ip_hash` can spread them). What they see is counted per window, which the panel streams to the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import httpx

from scaleout.lab.credential import Credential

PASSWORD = "panel password 1"
PACE = 0.1  # seconds between one user's requests: K users make about 10 K requests a second
HISTORY = 24  # replicas remembered per user for the map


@dataclass
class SimUser:
    index: int
    name: str
    client: httpx.AsyncClient
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=HISTORY))
    statuses: deque[int] = field(default_factory=lambda: deque(maxlen=HISTORY))
    # One request at a time per user, as one browser tab: a login and a read racing on the same cookie jar
    # could leave the user pinned (lb_route) to another replica than the one that holds its new session.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.carried = Credential(self.client.cookies)

    def headers(self, write: bool = False) -> dict[str, str]:
        return self.carried.headers(write)

    async def login(self) -> int:
        try:
            async with self.lock:
                r = await self.client.post("/api/login", json={"username": self.name, "password": PASSWORD})
        except httpx.HTTPError:
            return 599
        self.carried.took(r)
        return r.status_code

    def credential(self) -> tuple[str, str]:
        """What this user carries on every request: (header name, value)."""
        return self.carried.header()


@dataclass
class Window:
    """What the users saw since the previous window."""

    seconds: float
    per_replica: dict[str, int]
    statuses: dict[str, int]
    p50_ms: float
    p99_ms: float


class TrafficGenerator:
    def __init__(self, base_url: str, users: int) -> None:
        self.base_url = base_url
        self.count = users
        self.users: list[SimUser] = []
        self.running = False
        self._tasks: list[asyncio.Task[None]] = []
        self._replicas: Counter[str] = Counter()
        self._statuses: Counter[str] = Counter()
        self._latencies: list[float] = []
        self._window_start = time.monotonic()

    async def start(self) -> None:
        run = secrets.token_hex(3)
        for i in range(self.count):
            transport = httpx.AsyncHTTPTransport(local_address=f"127.0.{i % 250 + 1}.2")
            client = httpx.AsyncClient(base_url=self.base_url, timeout=5.0, transport=transport)
            self.users.append(SimUser(i, f"panel{run}u{i}", client))
        gate = asyncio.Semaphore(4)  # a few Argon2 hashes at a time, like people arriving

        async def arrive(user: SimUser) -> None:
            async with gate:
                with contextlib.suppress(httpx.HTTPError):
                    await user.client.post("/api/register", json={"username": user.name, "password": PASSWORD})
                await user.login()

        await asyncio.gather(*(arrive(u) for u in self.users))
        self.running = True
        self._tasks = [asyncio.create_task(self._loop(u)) for u in self.users]

    async def _loop(self, user: SimUser) -> None:
        await asyncio.sleep(PACE * user.index / max(1, self.count))  # spread the users over the pace
        while self.running:
            started = time.perf_counter()
            try:
                async with user.lock:
                    r = await user.client.get("/api/me", headers=user.headers())
                status, replica = r.status_code, r.headers.get("x-replica", "-")
            except httpx.HTTPError:
                status, replica = 599, "-"
            self._latencies.append((time.perf_counter() - started) * 1000)
            self._replicas[replica] += 1
            self._statuses[str(status) if status in (200, 401, 503) else "other"] += 1
            user.recent.append(replica)
            user.statuses.append(status)
            await asyncio.sleep(PACE)

    async def relogin_all(self) -> None:
        gate = asyncio.Semaphore(4)

        async def again(user: SimUser) -> None:
            async with gate:
                await user.login()

        await asyncio.gather(*(again(u) for u in self.users))

    async def stop(self) -> None:
        self.running = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for user in self.users:
            await user.client.aclose()
        self._tasks, self.users = [], []

    def take_window(self) -> Window:
        now = time.monotonic()
        lat = sorted(self._latencies)
        window = Window(
            seconds=round(now - self._window_start, 3),
            per_replica=dict(sorted(self._replicas.items())),
            statuses=dict(self._statuses),
            p50_ms=round(lat[len(lat) // 2], 2) if lat else 0.0,
            p99_ms=round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 2) if lat else 0.0,
        )
        self._replicas, self._statuses, self._latencies, self._window_start = Counter(), Counter(), [], now
        return window

    async def first_users_sessions(self) -> dict[str, object]:
        """User 0's sessions as the replica that answers sees them (`GET /api/sessions`)."""
        user = self.users[0]
        try:
            async with user.lock:
                r = await user.client.get("/api/sessions", headers=user.headers())
        except httpx.HTTPError:
            return {"status": 599, "replica": "-", "sessions": []}
        sessions = r.json().get("sessions", []) if r.status_code == 200 else []
        return {"status": r.status_code, "replica": r.headers.get("x-replica", "-"), "sessions": sessions}

    async def revoke_and_replay(self, replica_urls: list[str]) -> dict[str, object]:
        """Log user 0 out, then replay the credential it had on every replica, each asked directly (twice):
        through nginx, sticky and ip_hash would send every replay to one replica."""
        if not self.users:
            raise ValueError("start the traffic generator first")
        user = self.users[0]
        header, value = user.credential()
        r = await user.client.post("/api/logout", headers=user.headers(write=True))
        replays: Counter[str] = Counter()
        async with httpx.AsyncClient(timeout=5.0) as thief:
            for url in replica_urls * 2:
                try:
                    got = await thief.get(f"{url}/api/me", headers={header: value})
                    replays[f"{got.headers.get('x-replica', '-')} {got.status_code}"] += 1
                except httpx.HTTPError:
                    replays[f"{url} no answer"] += 1
        accepted = sum(n for k, n in replays.items() if k.endswith(" 200"))
        await user.login()  # the user carries on with a fresh login
        return {"logout_status": r.status_code, "replays": dict(sorted(replays.items())), "accepted": accepted}
