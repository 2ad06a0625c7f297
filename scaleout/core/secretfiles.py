"""The cluster's secrets on disk: created owner-only from the first byte, read by the services from there.

The local runner and compose's `secrets` service (`python -m services.serve secrets`) both call
`write_cluster_secrets`, so a container stack gets its own generated secrets exactly as a local cluster does.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from scaleout.core import redisconf
from scaleout.core.config import JWTAlg, Settings
from scaleout.core.keys import hs256_key


def write_cluster_secrets(settings: Settings) -> None:
    """Per-cluster secrets, each in an owner-only file of a directory only its owner can enter.

    Generated once and kept (the users database beside them outlives `down`); none is ever written to
    `state.json`, a rendered config, a command line or a log. Compose runs this in its `secrets` service.
    """
    s = settings
    directory = s.secrets_path
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    write_secret(directory / "redis_password", secrets.token_urlsafe(32))
    write_secret(directory / "redis_admin_password", secrets.token_urlsafe(32))
    write_secret(directory / "session_key", secrets.token_urlsafe(48))
    write_secret(directory / "redis.acl", _lines(redisconf.redis_acl(s)), replace=True)
    if s.jwt_alg is JWTAlg.HS256:
        if s.jwt_secret:  # handed in explicitly: it replaces the one on file
            write_secret(directory / "jwt_secret", s.jwt_secret, replace=True)
        else:
            write_secret(directory / "jwt_secret", secrets.token_urlsafe(32))
        hs256_key(s.hs256_secret())  # refuses a weak secret, naming JWT_SECRET
    for name in ("users.sqlite3", "users.sqlite3-wal", "users.sqlite3-shm"):
        if (directory / name).exists():
            (directory / name).chmod(0o600)
    if s.peers_by_name:
        write_compose_store_configs(s)


def write_compose_store_configs(s: Settings, secrets_seen_at: Path | None = None) -> None:
    """The container stack's Redis config (`redis.conf`: port, persistence, ACL file) and, with Sentinel
    (docker-compose.sentinel.yml), the Redis servers' and the Sentinels' configs, which hold the password,
    among the secrets. docker/sentinel-node.sh completes those with the peers' addresses in each container
    (a Sentinel rewrites its config)."""
    directory = s.secrets_path
    single = redisconf.redis_server(s, s.redis_port, "/tmp", secrets_seen_at=secrets_seen_at)
    write_secret(directory / "redis.conf", _lines(single), replace=True)
    if s.cluster:  # docker-compose.cluster.yml: every node the same, its bus on the port + 10000
        node = redisconf.cluster_node(s, s.redis_port, s.redis_port + 10000, "/tmp", secrets_seen_at=secrets_seen_at)
        write_secret(directory / "cluster-node.conf", _lines(node), replace=True)
    if not s.sentinel:
        return
    node = redisconf.redis_node(s, s.redis_port, "/tmp", secrets_seen_at=secrets_seen_at)
    write_secret(directory / "redis-node.conf", _lines(node), replace=True)
    write_secret(directory / "sentinel.conf", _lines(redisconf.sentinel_node(s, s.sentinel_port, "/tmp")), replace=True)
    # After `sentinel monitor`, which the container writes once it knows the primary's address.
    write_secret(directory / "sentinel-master.conf", _lines(redisconf.sentinel_monitor(s)), replace=True)


def _lines(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def write_secret(path: Path, value: str, replace: bool = False) -> None:
    """Create `path` with mode 0600 from the start (never world-readable, not even for a moment)."""
    if path.exists() and not replace:
        path.chmod(0o600)
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    tmp.replace(path)


# What each kind of container needs of the secrets, and nothing more (compose hands each its own volume).
ROLE_FILES = {
    "store": (
        "redis_password",
        "redis_admin_password",
        "redis.acl",
        "redis.conf",
        "redis-node.conf",
        "sentinel.conf",
        "sentinel-master.conf",
        "cluster-node.conf",
    ),
    "api": ("redis_password", "session_key", "jwt_secret"),
    "auth": ("redis_password", "session_key", "jwt_secret"),
}


def distribute(s: Settings, out: Path) -> list[str]:
    """Copy to `out/<role>/` the files each role needs (those that exist), owner-only; returns the roles
    served. A role whose directory is absent is not served (that stack did not ask for it)."""
    served = []
    for role, names in ROLE_FILES.items():
        target = out / role
        if not target.is_dir():
            continue
        for name in names:
            source = s.secrets_path / name
            if source.exists():
                write_secret(target / name, source.read_text(), replace=True)
            else:
                (target / name).unlink(missing_ok=True)  # a mode switched off (HS256) leaves nothing behind
        served.append(role)
    return served
