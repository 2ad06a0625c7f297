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
from scaleout.lab.topology import Topology

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
