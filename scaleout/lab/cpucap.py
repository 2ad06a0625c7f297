"""A CPU cap on running processes: one Linux cgroup, its CPU quota shared by all of them.

Overload is only worth measuring where the replicas are the bottleneck. On a two-core machine the replicas,
nginx, Redis and the load generator share the cores, and a generator written in Python cannot offer five
times what three uncapped replicas serve. Capping each replica to a fraction of a core scales the cluster
down until the generator can exceed its capacity many times over, while the work per request (and so what
queues and what is shed) stays what it is. The quota period is short, so a capped process is paused for a
millisecond's worth of work at a time, not for most of a 100 ms default period.

cgroup v2 (`cpu.max`) and v1 (`cpu.cfs_quota_us`) are both supported; the groups are removed on exit and
their processes moved back to the group they came from.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
QUOTA_US = 1000  # the least v1 accepts; the period is stretched to fit, so each pause is as short as it can be


class CPUCapError(RuntimeError):
    pass


def _hierarchy() -> tuple[Path, bool]:
    """The CPU controller's mount and whether it is cgroup v2."""
    if (ROOT / "cgroup.controllers").exists():
        if "cpu" not in (ROOT / "cgroup.controllers").read_text().split():
            raise CPUCapError("the cgroup v2 hierarchy has no cpu controller")
        return ROOT, True
    if (ROOT / "cpu" / "cpu.cfs_quota_us").exists():
        return ROOT / "cpu", False
    raise CPUCapError(f"no cgroup CPU controller under {ROOT}")


def _group_of(pid: int, base: Path, v2: bool) -> Path:
    """The group `pid` is in now, to move it back there."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (v2 and controllers == "") or (not v2 and "cpu" in controllers.split(",")):
            return base / path.lstrip("/")
    return base


@contextmanager
def cpu_cap(pids: list[int], cpus: float) -> Iterator[Callable[[float], None]]:
    """Together, `pids` may use at most `cpus` of one core while the block runs; the block gets a function
    that changes the cap."""
    base, v2 = _hierarchy()
    if v2:  # a v2 child gets the cpu controller only when its parent hands it down
        (base / "cgroup.subtree_control").write_text("+cpu")
    group = base / f"scaleout-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    moved: list[tuple[int, Path]] = []

    def cap(cpus: float) -> None:
        if not 0.01 <= cpus <= 1:
            raise CPUCapError(f"cpus must be between 0.01 and 1, not {cpus}")
        period = round(QUOTA_US / cpus)
        if v2:
            (group / "cpu.max").write_text(f"{QUOTA_US} {period}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(period))
            (group / "cpu.cfs_quota_us").write_text(str(QUOTA_US))

    try:
        cap(cpus)
        for pid in pids:
            origin = _group_of(pid, base, v2)
            (group / "cgroup.procs").write_text(str(pid))
            moved.append((pid, origin))
        yield cap
    finally:
        for pid, origin in moved:
            with suppress(OSError):  # the process ended, which empties the group just the same
                (origin / "cgroup.procs").write_text(str(pid))
        group.rmdir()
