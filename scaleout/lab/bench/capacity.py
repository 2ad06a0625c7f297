"""Beyond one machine: how many replicas one Redis serves, projected from CPU per request, then checked.

The projection: a Redis core spends `redis µs` per authenticated request (measured per mode by `wrk_run`,
pooled over all the mode's runs),
so it carries 1e6 / that many requests a second, and serves that ÷ (one replica's rate) replicas. The check:
drive the cluster's Redis with the read pattern alone (pipelined `GETEX` of session keys, what replicas
send) from several client processes, and measure the operations per second per busy Redis core.
"""

from __future__ import annotations

import multiprocessing
import socket
import time
from multiprocessing.connection import Connection

from scaleout.core.config import Settings
from scaleout.core.pipelined import pack
from scaleout.lab.bench.results import Capacity, ModeResult, RedisDrive
from scaleout.lab.drivers.base import ClusterError
from scaleout.lab.processes import CLK_TCK, cpu_ticks
from scaleout.lab.redisadmin import redis_command

KEYS = 1000


def project(modes: list[ModeResult]) -> list[Capacity]:
    out = []
    for m in modes:
        cpu = m.me.cpu_us_per_request
        redis_us = m.me.cpu_us_pooled.get("redis", cpu.get("redis", 0.0))
        core = round(1e6 / redis_us) if redis_us > 0 else None
        out.append(
            Capacity(
                m.mode,
                cpu["api"],
                cpu["nginx"],
                redis_us,
                m.me.rps,
                core,
                round(core / m.me.rps, 1) if core else None,
            )
        )
    return out


def _auth_bytes(username: str, password: str | None) -> bytes:

    return pack(("AUTH", username, password)) if password else b""


def _worker(host: str, port: int, auth: bytes, batch: int, seconds: float, prefix: str, out: Connection) -> None:
    import hiredis

    payload = b"".join(pack(("GETEX", f"{prefix}{i % KEYS}", "EX", "1800")) for i in range(batch))
    done = 0
    with socket.create_connection((host, port)) as s:
        reader = hiredis.Reader()
        if auth:
            s.sendall(auth)
            while reader.gets() is False:
                reader.feed(s.recv(4096))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            s.sendall(payload)
            got = 0
            while got < batch:
                reader.feed(s.recv(1 << 20))
                while reader.gets() is not False:
                    got += 1
            done += batch
    out.send(done)
    out.close()


def drive_redis(
    settings: Settings,
    host: str,
    port: int,
    redis_pid: int,
    seconds: float = 3.0,
    processes: int = 3,
    batch: int = 256,
    prefix: str = "sess:bench:",
) -> RedisDrive:
    """The replicas' read pattern alone, as fast as `processes` clients can send it; Redis's CPU meanwhile.
    On a Redis Cluster `prefix` carries a hash tag of a slot the Redis at host:port serves."""
    password = settings.redis_password()
    values = [w for i in range(KEYS) for w in (f"{prefix}{i}", "x" * 200)]  # session-sized values
    admin = settings.redis_admin_username, settings.redis_admin_password()
    if redis_command(host, port, *admin, "MSET", *values, timeout=10.0) != "OK":
        raise ClusterError(f"could not seed the Redis at {host}:{port} for the drive")
    auth = _auth_bytes(settings.redis_username, password)
    ctx = multiprocessing.get_context("fork")
    pipes = [ctx.Pipe(duplex=False) for _ in range(processes)]
    workers = [ctx.Process(target=_worker, args=(host, port, auth, batch, seconds, prefix, send)) for _, send in pipes]
    before = cpu_ticks([redis_pid])[redis_pid]
    started = time.monotonic()
    for w in workers:
        w.start()
    total = sum(recv.recv() for recv, _ in pipes)
    elapsed = time.monotonic() - started
    for w in workers:
        w.join()
    share = (cpu_ticks([redis_pid])[redis_pid] - before) / CLK_TCK / elapsed
    ops = total / elapsed
    return RedisDrive(processes, batch, round(ops), round(share, 3), round(ops / share) if share > 0 else 0.0)
