"""Processes the lab starts and watches: programs found, pids checked, logs read."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from scaleout.lab.drivers.base import ClusterError

CLK_TCK = os.sysconf("SC_CLK_TCK")


def require_program(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        raise ClusterError(f"'{name}' is not installed: run `make setup` (it installs Debian's {name}).")
    return path


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def nginx_workers(master: int) -> list[int]:
    """The worker processes of an nginx master (those of a previous config included, until they exit)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"\nPPid:\t{master}\n" in (entry / "status").read_text():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def tail(path: str, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """CPU ticks (user and system) each process has used so far; 0 for one that is gone."""
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError):
            out[pid] = 0
    return out


def rss_kib(pid: int) -> int:
    """Resident memory of a live process, from `/proc/<pid>/status`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ProcessLookupError(pid)
