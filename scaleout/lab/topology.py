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
        _wait(self.settled, timeout, "the Sentinel topology")

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


@dataclass(frozen=True)
class Shard:
    """One shard of a Redis Cluster: its slot ranges, the node that is its primary now, and its replicas."""

    number: int  # 1, 2, 3: in the order of their first slot
    slots: list[tuple[int, int]]
    primary: str
    replicas: list[str]  # answering replicas of this primary

    def describe(self) -> str:
        ranges = ",".join(f"{a}-{b}" for a, b in self.slots)
        replicas = ", ".join(self.replicas) or "none"
        return f"redis-shard-{self.number}: slots {ranges}, primary {self.primary}, replica {replicas}"


@dataclass
class ClusterTopology:
    """A Redis Cluster's nodes as one driver reaches them; who holds which slots is read from `CLUSTER NODES`
    (as the operator: the services' user may not ask it)."""

    redis_nodes: list[str]
    ask: Ask
    addresses: Callable[[str], Iterable[str]]  # "host:port" a node is known by

    def _table(self) -> list[list[str]] | None:
        for node in self.redis_nodes:
            reply = self.ask(node, "CLUSTER", "NODES")
            if isinstance(reply, str) and reply.strip():
                return [line.split() for line in reply.strip().splitlines()]
        return None

    def _name(self, endpoint: str) -> str | None:
        address = endpoint.split("@", 1)[0]
        return next((n for n in self.redis_nodes if address in set(self.addresses(n))), None)

    def shards(self) -> list[Shard]:
        """The shards as a node that answers sees them (empty when none answers)."""
        table = self._table() or []
        by_id = {row[0]: row for row in table if len(row) >= 8}
        shards = []
        for node_id, row in by_id.items():
            flags = row[2].split(",")
            slots = [_slot_range(s) for s in row[8:] if s[0].isdigit()]  # "[slot->-id]": being moved
            if "master" not in flags or not slots:
                continue
            replicas = [
                r[1]
                for r in by_id.values()
                if r[3] == node_id and "fail" not in r[2].split(",") and r[7] == "connected"
            ]
            primary = self._name(row[1]) or row[1]
            shards.append((min(a for a, _ in slots), sorted(slots), primary, [self._name(r) or r for r in replicas]))
        shards.sort()
        return [Shard(i, slots, primary, replicas) for i, (_, slots, primary, replicas) in enumerate(shards, start=1)]

    def fresh(self) -> bool:
        """Whether no node has met another yet (the cluster is to be created)."""
        return all(_info_field(self.ask(n, "CLUSTER", "INFO"), "cluster_known_nodes") == "1" for n in self.redis_nodes)

    def settled(self, shards: int = 3) -> bool:
        """Every node answers and says the cluster is ok; `shards` primaries hold every slot between them, and
        each has a replica linked."""
        if not all(_info_field(self.ask(n, "CLUSTER", "INFO"), "cluster_state") == "ok" for n in self.redis_nodes):
            return False
        found = self.shards()
        covered = sum(b - a + 1 for s in found for a, b in s.slots)
        return len(found) == shards and covered == 16384 and all(s.replicas for s in found)

    def wait_settled(self, timeout: float = 30.0) -> None:
        _wait(self.settled, timeout, "the Redis Cluster")

    def resolve(self, service: str, running: Callable[[str], bool], starting: bool = False) -> str:
        """`redis-shard-N` in a verb: that shard's primary now (to stop), or a stopped node (to start); `redis`
        stands for the first shard; any other name for itself."""
        if service != "redis" and not service.startswith("redis-shard-"):
            return service
        if starting:
            stopped = [n for n in self.redis_nodes if not running(n)]
            if not stopped:
                raise ClusterError("every Redis of the cluster is running")
            return stopped[0]
        number = 1 if service == "redis" else service.removeprefix("redis-shard-")
        found = {str(s.number): s.primary for s in self.shards()}
        if str(number) not in found:
            raise ClusterError(f"no shard {number} with a primary now (shards: {', '.join(found) or 'none'})")
        return found[str(number)]


def _info_field(info: object, field: str) -> str | None:
    if not isinstance(info, str):
        return None
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key == field:
            return value.strip()
    return None


def _slot_range(spec: str) -> tuple[int, int]:
    first, _, last = spec.partition("-")
    return int(first), int(last or first)


def _wait(settled: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not settled():
        if time.monotonic() > deadline:
            raise ClusterError(f"{what} did not settle within {timeout:.0f} s")
        time.sleep(0.1)
