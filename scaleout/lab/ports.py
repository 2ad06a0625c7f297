"""Free ports for a cluster of its own, and the settings that go with them."""

from __future__ import annotations

import random
import socket
from pathlib import Path

from scaleout.core.config import Settings
from scaleout.lab.drivers.base import ClusterError


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _listening_range() -> tuple[int, int]:
    """Ports outside the kernel's ephemeral range: an outgoing connection can never take one meanwhile."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return (10000, low - 1) if low > 12000 else (high + 1, 65000)


def free_ports(host: str, count: int, contiguous: int = 0) -> tuple[list[int], int]:
    """`count` free ports, and a base such that base+1..base+contiguous are free too (for api-N ports)."""
    rng = random.Random()
    first, last = _listening_range()
    for _ in range(1000):
        base = rng.randrange(first, last - contiguous)
        wanted = [base + i for i in range(1, contiguous + 1)] + [rng.randrange(first, last) for _ in range(count)]
        if len(set(wanted)) == len(wanted) and all(port_is_free(host, p) for p in wanted):
            return wanted[contiguous:], base
    raise ClusterError("no free ports found")


def free_blocks(host: str, sizes: list[int]) -> list[int]:
    """Bases of non-overlapping blocks of free ports (base .. base+size-1 each), outside the ephemeral range."""
    rng = random.Random()
    first, last = _listening_range()
    for _ in range(1000):
        bases = [rng.randrange(first, last - size) for size in sizes]
        wanted = [b + i for b, size in zip(bases, sizes, strict=True) for i in range(size)]
        if len(set(wanted)) == len(wanted) and all(port_is_free(host, p) for p in wanted):
            return bases
    raise ClusterError("no free ports found")


def isolated_settings(cluster_dir: Path, **overrides: object) -> Settings:
    """Settings for a cluster of its own: its own directory and free ports, so it never meets `make up`'s."""
    wanted = Settings.model_validate({"cluster_dir": cluster_dir, **overrides})  # validates the overrides first
    # api-N listens on base+N, so that block starts one below its first port.
    sizes = [wanted.replicas + 1, 1, 1, len(wanted.redis_ports), max(1, len(wanted.sentinel_ports)), 1, 2]
    api, nginx_port, auth_port, redis_port, sentinel_port, lab_port, proxies, bus = free_blocks(
        wanted.host, [*sizes, max(1, len(wanted.cluster_bus_ports))]
    )
    ports = {
        "redis_proxy_port": proxies,
        "auth_proxy_port": proxies + 1,
        "lab_port": lab_port,
        "nginx_port": nginx_port,
        "auth_port": auth_port,
        "redis_port": redis_port,
        "sentinel_port": sentinel_port,
        "cluster_bus_port": bus,
        "api_port_base": api,
    }
    return Settings.model_validate({"cluster_dir": cluster_dir, **ports, **overrides})


def settings_env(settings: Settings) -> dict[str, str]:
    """Settings as the environment variables every service reads them back from."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        env[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return env
