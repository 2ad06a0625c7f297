"""Simulated users for the demo: each has its own client (cookie jar, source address) and records every
request it makes, so scenarios can count what each replica answered and when."""

from __future__ import annotations

import secrets
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import httpx

from scaleout.lab.credential import Credential

T = TypeVar("T")

PASSWORD = "demo password 1"


@dataclass(frozen=True, slots=True)
class Hit:
    at: float  # monotonic seconds when the request started
    user: int
    replica: str
    status: int
    latency: float


@dataclass
class User:
    index: int
    base_url: str
    local_address: str | None = None
    name: str = field(default_factory=lambda: "demo" + secrets.token_hex(5))
    home: str | None = None  # the replica that answered its first /api/me
    last_status: int = 0  # of its last login

    def __post_init__(self) -> None:
        transport = httpx.HTTPTransport(local_address=self.local_address) if self.local_address else None
        self.client = httpx.Client(base_url=self.base_url, timeout=10.0, transport=transport)
        self.credential = Credential(self.client.cookies)

    @property
    def token(self) -> str | None:
        return self.credential.token

    def auth_headers(self, write: bool = False) -> dict[str, str]:
        """Its credential for a request; a cookie write also carries the CSRF token."""
        return self.credential.headers(write)

    def register_and_login(self) -> None:
        self.client.post("/api/register", json={"username": self.name, "password": PASSWORD})
        self.login()

    def login(self) -> bool:
        try:
            r = self.client.post("/api/login", json={"username": self.name, "password": PASSWORD})
        except httpx.HTTPError:
            self.last_status = 599
            return False
        self.last_status = r.status_code
        self.credential.took(r)
        return r.status_code == 200

    def me(self) -> Hit:
        start = time.perf_counter()
        try:
            r = self.client.get("/api/me", headers=self.credential.headers())
            status, replica = r.status_code, r.headers.get("x-replica", "-")
        except httpx.HTTPError:
            status, replica = 599, "-"  # no HTTP answer at all
        latency = time.perf_counter() - start
        return Hit(time.monotonic() - latency, self.index, replica, status, latency)

    def logout(self) -> int:
        return self.client.post("/api/logout", headers=self.auth_headers(write=True)).status_code

    def close(self) -> None:
        self.client.close()


def make_users(base_url: str, count: int, address: Callable[[int], str | None] = lambda _: None) -> list[User]:
    users = [User(i, base_url, address(i)) for i in range(count)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(User.register_and_login, users))
    return users


def drive(users: Iterable[User], requests: int, workers: int = 8) -> list[Hit]:
    """Each user makes `requests` GET /api/me in turn; users run concurrently."""

    def run(user: User) -> list[Hit]:
        hits = []
        for _ in range(requests):
            hits.append(user.me())
        return hits

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [hit for hits in pool.map(run, list(users)) for hit in hits]


def success_rate(hits: list[Hit]) -> float:
    return round(sum(h.status == 200 for h in hits) / len(hits), 4) if hits else 0.0


def per_replica(hits: list[Hit]) -> dict[str, int]:
    return dict(sorted(Counter(h.replica for h in hits).items()))


def imbalance(counts: dict[str, int]) -> float:
    values = [v for k, v in counts.items() if k != "-"]
    return round(max(values) / statistics.mean(values), 3) if values else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True, slots=True)
class Latency:
    p50: float
    p99: float


def latency_ms(hits: list[Hit]) -> Latency:
    ok = [h.latency * 1000 for h in hits if h.status == 200]
    return Latency(round(percentile(ok, 0.50), 3), round(percentile(ok, 0.99), 3))


def status_by_replica(hits: list[Hit]) -> dict[str, dict[str, int]]:
    """Per replica, how many requests got each status."""
    out: dict[str, Counter[str]] = {}
    for h in hits:
        out.setdefault(h.replica, Counter())[str(h.status)] += 1
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    started: float  # monotonic seconds
    value: T


class RequestLoop(Generic[T]):
    """`request(worker, n)` called over and over by `workers` threads until the loop stops.

    Every outcome is kept with the moment its request started, so a caller can ask what happened before and
    after an event (a fault, a revocation, a reload). The demo's faults, its live switch and the tests' races
    all run on this one loop.
    """

    def __init__(self, request: Callable[[int, int], T], workers: int = 4) -> None:
        self.request = request
        self.outcomes: list[Outcome[T]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(w, workers)) for w in range(workers)]

    def _run(self, worker: int, workers: int) -> None:
        n = worker
        while not self._stop.is_set():
            started = time.monotonic()
            self.outcomes.append(Outcome(started, self.request(worker, n)))
            n += workers

    def __enter__(self) -> RequestLoop[T]:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def values(self) -> list[T]:
        return [o.value for o in list(self.outcomes)]

    def between(self, start: float, end: float) -> list[T]:
        return [o.value for o in list(self.outcomes) if start <= o.started <= end]

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        return wait_until(predicate, timeout)
