"""CPU-bound overload: the replicas' own work is the bottleneck, measured the same way by the demo and the
tests.

The replicas are capped together to a fraction of a core (`cpucap`), so that the capacity wrk measures
(closed loop, every one of nginx's in-flight slots kept busy) is one the open-loop generator (`openloop`),
running on the same machine, can offer five times over. Then each multiple of it is offered for a while,
the replicas' memory is read before and after, and once the load drops, one user's requests in turn show
how soon full service is back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from scaleout.core.config import Settings
from scaleout.lab.bench.wrk import Target, wrk_run
from scaleout.lab.cpucap import cpu_cap
from scaleout.lab.openloop import OpenLoopRun, offer
from scaleout.lab.processes import rss_kib

CPUS = 0.2  # of one core, for all the replicas together, to start with
# The most the capped replicas should serve: five times it is what the generator, one Python process on the
# same two cores, still offers on time. A CPU quota is loosely kept (the kernel hands runtime out in slices
# per CPU), so the same share serves several times more on one run than on another: measured, then lowered.
MAX_CAPACITY = 1500.0
# Below this share the pauses between 1 ms slices (the least quota the kernel takes) grow past what the
# admitted requests' latency goal leaves room for.
MIN_CPUS = 0.15


@dataclass
class CPUBoundRun:
    cpus: float
    capacity_per_s: float  # wrk, closed loop, one connection per in-flight slot: nothing shed
    runs: dict[float, OpenLoopRun]  # by multiple of the capacity
    rss_growth_kib: list[int]  # each replica's, from before the first step to after the last
    recovery_s: float | None  # from the load dropping to the first of a second of answers all 200; None: never


def cpu_bound_overload(
    settings: Settings,
    replica_pids: list[int],
    credential: tuple[str, str],
    workdir: Path,
    seconds: float,
    multiples: tuple[float, ...] = (1, 2, 5),
    path: str = "/api/me",
) -> CPUBoundRun:
    import uvloop  # the generator must outpace the server

    header, value = credential
    s = settings

    def offer_sync(rate: float, duration: float) -> OpenLoopRun:
        return uvloop.run(offer(s.host, s.nginx_port, path, rate, duration, {header: value}))

    slots = s.replicas * s.replica_max_inflight

    def measure() -> float:
        measured = wrk_run(Target(s.public_url, path, header, (value,)), 2, {"api": replica_pids}, workdir, slots)
        if measured.errors:
            raise RuntimeError(f"wrk saw {measured.errors} errors measuring the capacity")
        return measured.rps

    cpus = CPUS
    with cpu_cap(replica_pids, cpus) as cap:
        capacity = measure()
        for _ in range(3):
            if capacity <= MAX_CAPACITY or cpus <= MIN_CPUS:
                break
            cpus = max(MIN_CPUS, round(cpus * 0.9 * MAX_CAPACITY / capacity, 3))
            cap(cpus)
            capacity = measure()
        before = [rss_kib(p) for p in replica_pids]
        runs = {x: offer_sync(x * capacity, seconds) for x in multiples}
        grown = [rss_kib(p) - b for p, b in zip(replica_pids, before, strict=True)]
        recovery = _recovery(s.public_url + path, {header: value})
    return CPUBoundRun(cpus, capacity, runs, grown, recovery)


def _recovery(url: str, headers: dict[str, str], within: float = 5.0, hold: float = 1.0) -> float | None:
    """Seconds until requests sent one after another are answered 200 for `hold` seconds without a break.

    One at a time, so that this load never exceeds what the replicas hold: a 503 here means they are not
    back yet, not that this check offered too much."""
    dropped = time.monotonic()
    since: float | None = None
    with httpx.Client(headers=headers, timeout=1.0) as c:
        while time.monotonic() - dropped < within + hold:
            at = time.monotonic()
            try:
                ok = c.get(url).status_code == 200
            except httpx.HTTPError:
                ok = False
            if not ok:
                since = None
            elif since is None:
                since = at
            elif at - since >= hold:
                return round(since - dropped, 3)
    return None
