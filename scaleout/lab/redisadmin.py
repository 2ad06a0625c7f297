"""The one way the lab talks to a Redis or a Sentinel of its own for administration (health, roles, the
topology, memory): one command over a socket, authenticated, its reply parsed as hiredis parses it. The
services themselves use redis-py; a container stack's servers are asked the same way through `redis-cli
--json` inside their containers (`drivers/compose.py`), into replies of the same shape."""

from __future__ import annotations

import socket


def redis_args(port: int) -> list[str]:
    """redis-server options for a scratch Redis of the tests' own (no persistence, own port); the cluster's
    servers take theirs from `scaleout.core.redisconf`. Protected mode stays on."""
    return ["--port", str(port), "--save", "", "--appendonly", "no", "--protected-mode", "yes"]


def redis_command(
    host: str, port: int, username: str, password: str | None, *command: str, timeout: float = 1.0
) -> object:
    """One command to a Redis or Sentinel, authenticated, as its raw reply (bytes decoded, errors as None);
    None too when it cannot be asked."""
    import hiredis

    def plain(value: object) -> object:
        if isinstance(value, bytes):
            return value.decode(errors="replace")
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    setup = [("AUTH", username, password)] if password else []
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"".join(hiredis.pack_command(c) for c in [*setup, command]))  # type: ignore[arg-type]  # any length
            reader = hiredis.Reader()
            replies: list[object] = []
            while len(replies) < len(setup) + 1:
                chunk = s.recv(65536)
                if not chunk:
                    return None
                reader.feed(chunk)
                while (reply := reader.gets()) is not False:
                    replies.append(reply)
    except OSError:
        return None
    if any(isinstance(r, hiredis.ReplyError) for r in replies):
        return None
    return plain(replies[-1])


def redis_ping(host: str, port: int, username: str, password: str | None) -> bool:
    """Health of a Redis (as the cluster's ACL user) or a Sentinel (as `default`)."""
    return redis_command(host, port, username, password, "PING", timeout=0.5) == "PONG"
