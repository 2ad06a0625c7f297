"""The Redis topology's decisions, for every driver: who is primary, when the topology has settled, and
what `redis` names in a verb. Each driver feeds its own way of asking (sockets locally, `redis-cli` in a
container) and of knowing a node's addresses; the decisions are made here only."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from scaleout.lab.drivers.base import ClusterError

Ask = Callable[..., object]  # ask(node, *command) -> the reply as hiredis parses it, or None


def cli_line(password_file: str, port: int, user: str, command: tuple[str, ...], json_reply: bool = False) -> str:
    """The shell line a container driver runs inside a Redis or Sentinel container: the password is read
    from the container's own secret file there, never put on a command line."""
    words = " ".join(shlex.quote(c) for c in command)
    flags = "-2 --json " if json_reply else ""
    return f'REDISCLI_AUTH="$(cat {password_file})" redis-cli {flags}-p {port} --user {user} --no-auth-warning {words}'


def cli_reply(out: str) -> object:
    """A `redis-cli -2 --json` reply in the shape the local driver's sockets give (RESP2); None for an error."""
    out = out.strip()
    if out.startswith(("(error)", "ERR", "NOAUTH", "WRONGPASS")):
        return None
    try:
        return json.loads(out)
    except ValueError:
        return out  # a bulk string (INFO) is printed as it is, not as JSON


def linked_redis_replicas(reply: object) -> int:
    """How many replicas a `SENTINEL replicas` reply lists as up and linked to their primary."""
    if not isinstance(reply, list):
        return 0
    fields = [dict(zip(r[::2], r[1::2], strict=True)) for r in reply if isinstance(r, list)]
    return sum(f.get("flags") == "slave" and f.get("master-link-status") == "ok" for f in fields)


@dataclass
class Topology:
    """A Redis primary, its Redis replicas and the Sentinels watching them, as one driver reaches them (here
    "replica" is always a Redis replica; an API process is never one of these)."""

    redis_nodes: list[str]
    sentinels: list[str]
    master: str
    ask: Ask
    addresses: Callable[[str], Iterable[str]]  # "host:port" a node is known by

    def primary(self) -> str | None:
        """The node the first Sentinel that answers names as primary (None during a failover)."""
        for sentinel in self.sentinels:
            reply = self.ask(sentinel, "SENTINEL", "get-master-addr-by-name", self.master)
            if isinstance(reply, list) and len(reply) == 2:
                address = f"{reply[0]}:{reply[1]}"
                return next((n for n in self.redis_nodes if address in set(self.addresses(n))), None)
        return None

    def settled(self) -> bool:
        """A primary with every Redis replica in sync, every Sentinel knowing the others and every Redis replica
        as up: before that, a failover cannot reach its quorum or would orphan a Redis replica."""
        primary = self.primary()
        if primary is None:
            return False
        redis_replicas = len(self.redis_nodes) - 1
        info = self.ask(primary, "INFO", "replication")
        if not (isinstance(info, str) and info.count("state=online") == redis_replicas):
            return False
        for sentinel in self.sentinels:
            others = self.ask(sentinel, "SENTINEL", "sentinels", self.master)
            if not (isinstance(others, list) and len(others) == len(self.sentinels) - 1):
                return False
            if linked_redis_replicas(self.ask(sentinel, "SENTINEL", "replicas", self.master)) != redis_replicas:
                return False
        return True

    def wait_settled(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.settled():
            if time.monotonic() > deadline:
                raise ClusterError(f"the Sentinel topology did not settle within {timeout:.0f} s")
            time.sleep(0.1)

    def resolve(self, service: str, running: Callable[[str], bool], starting: bool = False) -> str:
        """`redis` in a verb: the primary now (to stop), or a stopped Redis (to start); any other name, and
        every name of a single Redis, stands for itself."""
        if service != "redis":
            return service
        if starting:
            stopped = [n for n in self.redis_nodes if not running(n)]
            if not stopped:
                raise ClusterError("every Redis is running")
            return stopped[0]
        primary = self.primary()
        if primary is None:
            raise ClusterError("no Redis is primary right now (a failover may be under way)")
        return primary
