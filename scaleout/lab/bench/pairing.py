"""Pairs of runs close in time, and the ratio between their sides.

On a shared machine the CPU cost of the very same request drifts within seconds, so a ratio is only
meaningful between two runs taken back to back; alternating the order (A B, B A, ...) gives whatever favours
the first (or second) run of a pair to both sides equally.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from scaleout.lab.bench.wrk import Target, WrkRun, wrk_run


@dataclass(frozen=True, slots=True)
class Ratio:
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, ratios: list[float]) -> Ratio:
        return cls(round(statistics.median(ratios), 3), round(min(ratios), 3), round(max(ratios), 3))


@dataclass
class Pairs:
    """Both sides' runs and the per-pair ratios b/a, pooled over several clusters."""

    a: list[WrkRun] = field(default_factory=list)
    b: list[WrkRun] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)

    def __iadd__(self, other: Pairs) -> Pairs:
        self.a += other.a
        self.b += other.b
        self.ratios += other.ratios
        return self


def pairs(a: Target, b: Target, n: int, seconds: float, procs: dict[str, list[int]], workdir: Path) -> Pairs:
    out = Pairs()
    for i in range(n):
        first, second = (b, a) if i % 2 else (a, b)
        one = wrk_run(first, seconds, procs, workdir)
        two = wrk_run(second, seconds, procs, workdir)
        ra, rb = (two, one) if i % 2 else (one, two)
        out.a.append(ra)
        out.b.append(rb)
        out.ratios.append(rb.rps / ra.rps)
    return out
