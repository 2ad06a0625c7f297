"""Past one Redis (`make bench --topology cluster`): what each shard of the Redis Cluster costs, and how many
shards S sessions and R API replicas need.

Measured on the running local cluster through the product's own store: 10,000 logins (each a session, its
user's index entry and a `WAIT` for the shard's replica) spread over the shards by their users' slot tags,
then every session read once as the replicas read (pipelined `GET`s). Each primary's memory and CPU before
and after give its cost per session, per login and per read. The rule: a shard's primary has one core
(Redis runs commands on one thread) and a memory budget; R replicas at their measured rate and the stated
mix (reads per login) need `R x rate x CPU per request / (budget x 1e6)` primaries for CPU, S sessions
`S x bytes per session / memory budget` for memory; the larger wins. The check: the replicas' read pattern
alone driven at all three local shards at once, reads per busy core-second against the projection.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from redis.crc import key_slot

from scaleout.lab.bench.capacity import drive_redis
from scaleout.lab.bench.results import ClusterSizing, ShardCost, ShardProjection
from scaleout.lab.drivers.local import Cluster
from scaleout.lab.redisadmin import redis_command
from scaleout.lab.topology import Shard

READS_PER_LOGIN = 100  # the stated mix: a login, then a hundred authenticated requests
SHARD_MEMORY_GIB = 8.0  # one primary's memory budget (its replica needs as much, on another machine)
SHARD_CORE_SHARE = 0.5  # one primary's CPU budget: half its core, headroom for a failover's resync and spikes
PROJECT = ((1_000_000, 10), (10_000_000, 100), (100_000_000, 1_000))


def _info(cluster: Cluster, node: str, section: str) -> dict[str, str]:
    svc = cluster.services[node]
    s = cluster.settings
    reply = str(redis_command(svc.host, svc.port, s.redis_admin_username, s.redis_admin_password(), "INFO", section))
    return dict(line.split(":", 1) for line in reply.splitlines() if ":" in line)


def _cpu_us(cluster: Cluster, node: str) -> float:
    found = _info(cluster, node, "cpu")
    return (float(found["used_cpu_sys"]) + float(found["used_cpu_user"])) * 1e6


def _memory(cluster: Cluster, node: str) -> int:
    return int(_info(cluster, node, "memory")["used_memory"])


def _owner(shards: list[Shard], key: str) -> Shard:
    slot = key_slot(key.encode())
    return next(s for s in shards if any(a <= slot <= b for a, b in s.slots))


def _tag_in(shard: Shard) -> str:
    """A hash tag whose slot this shard serves (the drive's keys must live there)."""
    return next(
        f"{t:04x}" for t in range(1 << 16) if any(a <= key_slot(f"{t:04x}".encode()) <= b for a, b in shard.slots)
    )


def measure_shards(cluster: Cluster, n: int, drive_seconds: float) -> list[ShardCost]:
    from scaleout.core.keyspace import session_key
    from scaleout.core.sessions import RedisSessions, Session, new_handle
    from scaleout.core.store import make_store

    shards = cluster.shards()
    primaries = [s.primary for s in shards]
    settings = cluster.settings

    async def write_then_read() -> tuple[dict[str, float], dict[str, float], dict[str, int], Counter[str]]:
        store = make_store(settings)
        reads = store.reads()
        sessions = RedisSessions.for_settings(settings, store, reads)
        try:
            ids = [sessions.new_id(f"uid-shard-bench-{i}") for i in range(n)]
            where = Counter(_owner(shards, session_key(sid.encode())).primary for sid in ids)
            cpu = {p: _cpu_us(cluster, p) for p in primaries}
            memory = {p: _memory(cluster, p) for p in primaries}
            for start in range(0, n, 100):
                await asyncio.gather(
                    *(
                        sessions.put(
                            sid, Session("bench", "c", time.time(), f"uid-shard-bench-{start + i}", new_handle())
                        )
                        for i, sid in enumerate(ids[start : start + 100])
                    )
                )
            login = {p: _cpu_us(cluster, p) - cpu[p] for p in primaries}
            grown = {p: _memory(cluster, p) - memory[p] for p in primaries}
            cpu = {p: _cpu_us(cluster, p) for p in primaries}
            for start in range(0, n, 256):
                replies = await asyncio.gather(
                    *(reads.call("GET", session_key(sid.encode())) for sid in ids[start : start + 256])
                )
                if any(r is None for r in replies):
                    raise RuntimeError("a session written for the bench was not found")
            read = {p: _cpu_us(cluster, p) - cpu[p] for p in primaries}
            for sid in ids:
                await sessions.delete(sid)
        finally:
            await reads.aclose()
            await store.aclose()
        return login, read, grown, where

    login, read, grown, where = asyncio.run(write_then_read())

    def drive(shard: Shard) -> Any:
        svc = cluster.services[shard.primary]
        prefix = "sess:{" + _tag_in(shard) + "}:bench:"
        return drive_redis(settings, svc.host, svc.port, svc.pid or 0, drive_seconds, 2, prefix=prefix)

    with ThreadPoolExecutor(len(shards)) as pool:  # every shard at once: the cluster's capacity, not one's
        drives = list(pool.map(drive, shards))
    out = []
    for shard, d in zip(shards, drives, strict=True):
        p, k = shard.primary, where[shard.primary]
        out.append(
            ShardCost(
                shard.number,
                p,
                k,
                round(grown[p] / 1024 / k * 10_000, 1) if k else 0.0,
                round(login[p] / k, 1) if k else 0.0,
                round(read[p] / k, 2) if k else 0.0,
                d.ops_per_s,
                d.redis_cpu_share,
                d.ops_per_redis_core_s,
            )
        )
    return out


def sizing(shards: list[ShardCost], read_us: float, replica_rps: float) -> ClusterSizing:
    """The rule, stated for READS_PER_LOGIN reads per login, projected to PROJECT's sizes."""
    counted = [s for s in shards if s.sessions]
    login_us = sum(s.login_cpu_us for s in counted) / len(counted)
    bytes_per_session = sum(s.kib_per_10k_sessions for s in counted) / len(counted) * 1024 / 10_000
    per_request_us = read_us + login_us / READS_PER_LOGIN
    projections = []
    for sessions, replicas in PROJECT:
        memory = math.ceil(sessions * bytes_per_session / (SHARD_MEMORY_GIB * 2**30))
        cpu = math.ceil(replicas * replica_rps * per_request_us / (SHARD_CORE_SHARE * 1e6))
        projections.append(ShardProjection(sessions, replicas, memory, cpu, max(memory, cpu, 1)))
    return ClusterSizing(
        shards,
        READS_PER_LOGIN,
        round(read_us, 2),
        round(login_us, 1),
        round(replica_rps),
        round(bytes_per_session),
        SHARD_MEMORY_GIB,
        SHARD_CORE_SHARE,
        projections,
    )
