"""The driver interface: every place the cluster runs offers the same verbs, declares what it cannot run,
and takes the Redis topology's decisions from one module."""

from __future__ import annotations

from pathlib import Path

import pytest

from scaleout.core.config import Settings
from scaleout.lab.drivers.base import ClusterDriver, ClusterError
from scaleout.lab.drivers.compose import Stack
from scaleout.lab.drivers.local import Cluster
from scaleout.lab.drivers.swarm import Swarm
from scaleout.lab.topology import ClusterTopology, Topology

VERBS = ["up", "down", "status", "lb", "stop", "start", "primary", "replica_cpu_seconds", "logs", "cannot_run"]


@pytest.mark.parametrize("driver", [Cluster, Stack, Swarm])
def test_every_driver_offers_the_whole_interface(driver: type, tmp_path: Path) -> None:
    made: ClusterDriver = driver(Settings(cluster_dir=tmp_path))
    for verb in VERBS:
        assert callable(getattr(made, verb)), verb
    assert made.public_url.startswith("http://127.0.0.1:")


def test_a_scenario_a_driver_cannot_run_is_declared_with_the_reason(tmp_path: Path) -> None:
    assert Cluster(Settings(cluster_dir=tmp_path)).cannot_run("replication_growth") is None
    why = Stack(Settings(cluster_dir=tmp_path)).cannot_run("replication_growth")
    assert why is not None and "REPLICAS" in why
    assert Stack(Settings(cluster_dir=tmp_path)).cannot_run("sticky") is None
    assert Swarm(Settings(cluster_dir=tmp_path)).cannot_run("slow_store") is not None  # no fault proxies there
    assert Swarm(Settings(cluster_dir=tmp_path)).cannot_run("store_failover") is None  # Sentinel on the swarm
    assert Swarm(Settings(cluster_dir=tmp_path)).cannot_run("sticky") is None


class Replies:
    """What the Sentinels and the Redis servers answer, as a driver would hand them over."""

    def __init__(self, primary: str | None, online: int = 2, sentinels_seen: int = 2, replicas_ok: int = 2) -> None:
        self.primary, self.online, self.seen, self.ok = primary, online, sentinels_seen, replicas_ok

    def __call__(self, node: str, *command: str) -> object:
        if command[:2] == ("SENTINEL", "get-master-addr-by-name"):
            return (
                None
                if self.primary is None
                else ["10.0.0.1", "6380"]
                if self.primary == "redis"
                else ["10.0.0.2", "6380"]
            )
        if command[:2] == ("SENTINEL", "sentinels"):
            return [["name", f"s{i}"] for i in range(self.seen)]
        if command[:2] == ("SENTINEL", "replicas"):
            ok = [["flags", "slave", "master-link-status", "ok"]] * self.ok
            return ok + [["flags", "slave,s_down", "master-link-status", "err"]] * (2 - self.ok)
        if command == ("INFO", "replication"):
            return "role:master\n" + "slave0:state=online\n" * self.online
        return None


ADDRESSES = {"redis": ["10.0.0.1:6380"], "redis-2": ["10.0.0.2:6380"], "redis-3": ["10.0.0.3:6380"]}


def topology(replies: Replies) -> Topology:
    return Topology(list(ADDRESSES), ["s1", "s2", "s3"], "scaleout", replies, ADDRESSES.__getitem__)


def test_the_primary_is_the_node_the_sentinels_name_by_address() -> None:
    assert topology(Replies("redis")).primary() == "redis"
    assert topology(Replies("redis-2")).primary() == "redis-2"
    assert topology(Replies(None)).primary() is None


@pytest.mark.parametrize(
    ("replies", "settled"),
    [
        (Replies("redis"), True),
        (Replies("redis", online=1), False),  # a replica not in sync yet
        (Replies("redis", sentinels_seen=1), False),  # a Sentinel that has not met the others
        (Replies("redis", replicas_ok=1), False),  # a replica a Sentinel does not know as up
        (Replies(None), False),  # a failover under way
    ],
)
def test_settled_means_every_part_of_the_topology_agrees(replies: Replies, settled: bool) -> None:
    assert topology(replies).settled() is settled


def test_redis_names_the_primary_to_stop_and_a_stopped_one_to_start() -> None:
    t = topology(Replies("redis-2"))
    assert t.resolve("redis", lambda n: True) == "redis-2"
    assert t.resolve("redis", lambda n: n != "redis-3", starting=True) == "redis-3"
    assert t.resolve("api-2", lambda n: True) == "api-2"
    with pytest.raises(ClusterError, match="every Redis is running"):
        t.resolve("redis", lambda n: True, starting=True)
    with pytest.raises(ClusterError, match="no Redis is primary"):
        topology(Replies(None)).resolve("redis", lambda n: True)


# `CLUSTER NODES` as a Redis 7.0 node prints it: shard 2's primary (redis-2) failed and its replica (redis-5)
# took its slots; redis-2 is back as redis-5's replica; shard 3's slot 16383 is being moved to redis-1.
NODES = """\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460 [16383-<-c3]
a2 127.0.0.1:7002@17002 slave b5 0 1 7 connected
c3 127.0.0.1:7003@17003 master - 0 1 3 connected 10923-16383
d4 127.0.0.1:7004@17004 slave a1 0 1 1 connected
b5 127.0.0.1:7005@17005 master - 0 1 7 connected 5461-10922
f6 127.0.0.1:7006@17006 slave c3 0 1 3 connected
"""


def cluster_of(nodes: str, info: str = "cluster_state:ok\r\ncluster_known_nodes:6\r\n") -> ClusterTopology:
    names = [f"redis-{n}" for n in range(1, 7)]

    def ask(node: str, *command: str) -> object:
        return nodes if command == ("CLUSTER", "NODES") else info

    return ClusterTopology(names, ask, lambda n: [f"127.0.0.1:700{n[-1]}"])


def test_a_redis_clusters_shards_are_read_by_their_first_slot_whoever_is_primary_now() -> None:
    topology = cluster_of(NODES)
    shards = topology.shards()
    assert [(s.number, s.slots, s.primary, s.replicas) for s in shards] == [
        (1, [(0, 5460)], "redis-1", ["redis-4"]),
        (2, [(5461, 10922)], "redis-5", ["redis-2"]),
        (3, [(10923, 16383)], "redis-3", ["redis-6"]),
    ]
    assert shards[1].describe() == "redis-shard-2: slots 5461-10922, primary redis-5, replica redis-2"
    assert topology.settled()
    running = {f"redis-{n}" for n in (1, 2, 3, 4, 6)}
    assert topology.resolve("redis-shard-2", running.__contains__) == "redis-5"  # the primary now
    assert topology.resolve("redis", running.__contains__) == "redis-1"
    assert topology.resolve("redis-shard-2", running.__contains__, starting=True) == "redis-5"  # the stopped one
    assert topology.resolve("api-2", running.__contains__) == "api-2"
    with pytest.raises(ClusterError, match="no shard 4"):
        topology.resolve("redis-shard-4", running.__contains__)
    # A shard without a replica, or a node that says the cluster is not ok, is not settled.
    assert not cluster_of(NODES.replace("slave b5", "slave a1")).settled()
    assert not cluster_of(NODES, "cluster_state:fail\r\n").settled()
    assert not cluster_of(NODES, "cluster_state:ok\r\ncluster_known_nodes:6\r\n").fresh()
    assert cluster_of("", "cluster_state:fail\r\ncluster_known_nodes:1\r\n").fresh()
