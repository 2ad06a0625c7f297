"""The Redis and Sentinel configuration of the cluster's store, written once for every place it runs.

The local runner writes whole files (it knows every address); compose's `secrets` service writes the same
lines as templates that `docker/sentinel-node.sh` completes in each container with the addresses only it
can resolve (`replicaof`, `sentinel monitor`, `sentinel known-replica`). Every file holds the password, so
each is written owner-only, among the secrets.
"""

from __future__ import annotations

from hashlib import sha256
from pathlib import Path

from scaleout.core.config import RedisPersistence, Settings

# Every command the services send, the ones their Lua scripts call included (Redis checks those too), and
# nothing else: no CONFIG, REPLICAOF, FLUSHALL, KEYS, DEBUG, MONITOR, ACL, SHUTDOWN, no channels. A command
# added to the code without its name here fails every test that reaches it (NOPERM), not in production.
APP_COMMANDS = [
    "get",
    "getex",
    "getdel",
    "multi",
    "exec",
    "discard",
    "set",
    "del",
    "exists",
    "expire",
    "ttl",
    "incr",
    "decr",
    "hset",
    "hget",
    "hdel",
    "hexists",
    "hgetall",
    "hkeys",
    "zadd",
    "zcard",
    "zrange",
    "zrem",
    "zscore",
    "eval",
    "evalsha",
    "script|load",
    "script|exists",
    "wait",
    "ping",
    "role",
    "select",
    "client|setname",
    "hello",  # SESSION_CACHE=tracking: RESP3 on the read connection, and tracking on it
    "client|tracking",
]
# On a Redis Cluster the services also read the slot map and follow a slot being moved (ASK); never
# CLUSTER NODES (the cluster's own addresses and IDs: the operator's), nor anything that changes the cluster.
CLUSTER_APP_COMMANDS = ["cluster|slots", "asking"]
# How many keys Redis tracks for the near-cache at most (its memory for the tracking table); beyond it Redis
# stops tracking keys, and invalidates them first, so no client keeps a key nobody would invalidate.
TRACKING_TABLE_MAX_KEYS = 1_000_000
# What a client may ask a Sentinel: where the primary is, and who else is watching it. Not MONITOR,
# REMOVE, SET, FAILOVER or CONFIG: a client that could would point everyone at a Redis of its choosing.
SENTINEL_QUERIES = [
    "ping",
    "client|setname",
    "sentinel|get-master-addr-by-name",
    "sentinel|masters",
    "sentinel|master",
    "sentinel|replicas",
    "sentinel|slaves",
    "sentinel|sentinels",
]


def _hashed(password: str | None) -> str:
    # An ACL rule holds the password's SHA-256, so the file that Redis reads names no usable password.
    return "#" + sha256((password or "").encode()).hexdigest()


def redis_acl(s: Settings) -> list[str]:
    """The users of every Redis server of the cluster: no anonymous login, the services' user with the
    commands they send, the administrative user (replication, the Sentinels, the operator) with all."""
    commands = APP_COMMANDS + (CLUSTER_APP_COMMANDS if s.cluster else [])
    return [
        # Nobody can log in as `default` (off), but Redis replays the append-only file as `default`, and
        # re-checks a MULTI/EXEC's commands against that user's rules while loading it (redis/redis#14541):
        # without every permission, a restart would silently drop each transaction's writes.
        "user default off ~* &* +@all",
        f"user {s.redis_username} on {_hashed(s.redis_password())} ~* resetchannels -@all "
        + " ".join(f"+{c}" for c in commands),
        f"user {s.redis_admin_username} on {_hashed(s.redis_admin_password())} ~* &* +@all",
    ]


def persistence(s: Settings) -> list[str]:
    """REDIS_PERSISTENCE: an append-only file synced every second, or nothing on disk. Never RDB snapshots:
    a snapshot loses every write since the last one, which is what `aof` exists to prevent."""
    if s.redis_persistence == RedisPersistence.aof:
        return ['save ""', "appendonly yes", "appendfsync everysec"]
    return ['save ""', "appendonly no"]


def redis_server(
    s: Settings, port: int, data_dir: Path | str, bind: str | None = None, secrets_seen_at: Path | None = None
) -> list[str]:
    """Any Redis of the cluster: its port, persistence and data directory, and the ACL file (no anonymous
    user). `secrets_seen_at`: where the server finds the secrets, when not where they are written."""
    return [
        f"port {port}",
        *([f"bind {bind}"] if bind else []),
        "protected-mode yes",
        *persistence(s),
        f"dir {data_dir}",
        f"aclfile {(secrets_seen_at or s.secrets_path) / 'redis.acl'}",
        f"tracking-table-max-keys {TRACKING_TABLE_MAX_KEYS}",
    ]


def as_args(lines: list[str]) -> list[str]:
    """Config lines as redis-server options (`save ""` -> `--save ""`)."""
    out: list[str] = []
    for line in lines:
        key, _, value = line.partition(" ")
        out += [f"--{key}", "" if value == '""' else value]
    return out


def redis_node(
    s: Settings, port: int, data_dir: Path | str, bind: str | None = None, secrets_seen_at: Path | None = None
) -> list[str]:
    """A Redis of the Sentinel topology: any Redis's lines, and how a replica authenticates to its primary."""
    return [
        *redis_server(s, port, data_dir, bind, secrets_seen_at),
        f"masteruser {s.redis_admin_username}",
        f"masterauth {s.redis_admin_password() or ''}",
        "repl-diskless-sync-delay 0",  # no data to wait for: replicas sync at once
    ]


def cluster_node(
    s: Settings,
    port: int,
    bus_port: int,
    data_dir: Path | str,
    bind: str | None = None,
    secrets_seen_at: Path | None = None,
) -> list[str]:
    """A node of the Redis Cluster topology: a Sentinel topology's Redis lines (replication authenticates as
    the administrative user), and the cluster's own: its state file beside the data, a primary silent for
    `cluster_node_timeout_ms` replaced by its replica, and the other shards served while one has none."""
    return [
        *redis_node(s, port, data_dir, bind, secrets_seen_at),
        "cluster-enabled yes",
        f"cluster-port {bus_port}",
        "cluster-config-file nodes.conf",
        f"cluster-node-timeout {s.cluster_node_timeout_ms}",
        "cluster-require-full-coverage no",
    ]


def sentinel_node(s: Settings, port: int, data_dir: Path | str, bind: str | None = None) -> list[str]:
    """A Sentinel: the other Sentinels and the operator as `default` with the administrative password, the
    services as their own user that may only ask; peers by address, never by host name."""
    admin = s.redis_admin_password() or ""
    return [
        f"port {port}",
        *([f"bind {bind}", "protected-mode yes"] if bind else []),
        f"dir {data_dir}",
        f"requirepass {admin}",
        f"sentinel sentinel-pass {admin}",
        f"user {s.redis_username} on {_hashed(s.redis_password())} resetchannels -@all "
        + " ".join(f"+{c}" for c in SENTINEL_QUERIES),
        # A Sentinel that monitors a host name resolves it on every check, and blocks while the dead
        # container's name takes Docker's DNS seconds to answer: addresses only.
        "sentinel resolve-hostnames no",
    ]


def sentinel_monitor(
    s: Settings, primary: tuple[str, int] | None = None, replicas: list[tuple[str, int]] | None = None
) -> list[str]:
    """What a Sentinel watches: the primary (when known here), how to reach it, the failover's pace, and the
    replicas named at once (a Sentinel otherwise learns of them from the primary's INFO, polled every 10 s,
    and a failover before that leaves the one it missed following a dead primary)."""
    m = s.sentinel_master
    return [
        *([f"sentinel monitor {m} {primary[0]} {primary[1]} 2"] if primary else []),
        f"sentinel auth-user {m} {s.redis_admin_username}",
        f"sentinel auth-pass {m} {s.redis_admin_password() or ''}",
        f"sentinel down-after-milliseconds {m} {s.sentinel_down_after_ms}",
        f"sentinel failover-timeout {m} {s.sentinel_failover_timeout_ms}",
        f"sentinel parallel-syncs {m} 1",
        *(f"sentinel known-replica {m} {host} {port}" for host, port in replicas or []),
    ]
