"""One wrk run against one target, with the CPU every process spent on it.

Server CPU per request comes from `/proc/<pid>/stat` (utime + stime) of each process group; wrk's own from
its rusage as our child.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from scaleout.lab.processes import CLK_TCK, cpu_ticks, require_program

LUA = Template((Path(__file__).parent / "wrk.lua").read_text())
CLIENT = "wrk (client)"


@dataclass(frozen=True)
class Target:
    url: str
    path: str
    header: str = ""
    creds: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WrkRun:
    """One run's numbers (or, from `summarise`, the medians of several)."""

    rps: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    cpu_us_per_request: dict[str, float] = field(default_factory=dict)
    # From `summarise`: each process's CPU over all the runs ÷ all their requests. Finer than the median of
    # the runs where a process is nearly idle (Redis behind a near-cache: its 10 ms CPU clock does not move
    # in most 1 s runs).
    cpu_us_pooled: dict[str, float] = field(default_factory=dict)


def lua_script(target: Target, directory: Path) -> Path:
    creds = ", ".join(json.dumps(c) for c in target.creds)
    script = directory / f"wrk-{abs(hash((target.path, target.header, target.creds)))}.lua"
    script.write_text(LUA.substitute(creds=creds, header=target.header, path=target.path))
    return script


def wrk_run(
    target: Target, seconds: float, processes: dict[str, list[int]], workdir: Path, connections: int = 32
) -> WrkRun:
    script = lua_script(target, workdir)
    pids = [p for group in processes.values() for p in group]
    before = cpu_ticks(pids)
    client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    argv = [require_program("wrk"), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s"]
    run = subprocess.run([*argv, "-s", str(script), target.url], capture_output=True, text=True, timeout=seconds + 60)
    after = cpu_ticks(pids)
    client_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
    if run.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed: {run.stdout[-500:]} {run.stderr[-500:]}")
    r = json.loads(line.removeprefix("RESULT "))
    n = max(1, r["requests"])
    cpu = {
        name: round(sum(after[p] - before[p] for p in group) / CLK_TCK / n * 1e6, 1)
        for name, group in processes.items()
    }
    # wrk is the only child that exits during a run; it shares the machine with the servers.
    client = (client_after.ru_utime + client_after.ru_stime) - (client_before.ru_utime + client_before.ru_stime)
    cpu[CLIENT] = round(client / n * 1e6, 1)
    return WrkRun(
        rps=round(r["requests"] / (r["duration_us"] / 1e6), 1),
        requests=r["requests"],
        errors=r["errors"] + r["non2xx"],
        p50_ms=r["p50_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        p999_ms=r["p999_us"] / 1000,
        cpu_us_per_request=cpu,
    )


def summarise(runs: list[WrkRun]) -> WrkRun:
    """Medians of the runs' rates, latencies and CPU; totals of requests and errors."""
    total = sum(r.requests for r in runs)
    return WrkRun(
        rps=round(statistics.median(r.rps for r in runs), 1),
        requests=sum(r.requests for r in runs),
        errors=sum(r.errors for r in runs),
        p50_ms=round(statistics.median(r.p50_ms for r in runs), 3),
        p99_ms=round(statistics.median(r.p99_ms for r in runs), 3),
        p999_ms=round(statistics.median(r.p999_ms for r in runs), 3),
        cpu_us_per_request={
            k: round(statistics.median(r.cpu_us_per_request[k] for r in runs), 1) for k in runs[0].cpu_us_per_request
        },
        cpu_us_pooled={
            k: round(sum(r.cpu_us_per_request[k] * r.requests for r in runs) / max(1, total), 3)
            for k in runs[0].cpu_us_per_request
        },
    )
