"""The Redis Cluster sizing rule (`make bench --topology cluster`), on made-up measurements."""

from __future__ import annotations

from scaleout.lab.bench.output import lines
from scaleout.lab.bench.results import BenchResults, BenchSettings, ShardCost
from scaleout.lab.bench.shards import SHARD_CORE_SHARE, SHARD_MEMORY_GIB, sizing


def shard(n: int, kib: float, login_us: float) -> ShardCost:
    return ShardCost(n, f"redis-{n}", 3_000 + n, kib, login_us, 2.5, 300_000.0, 0.9, 333_333.0)


def test_the_larger_of_memory_and_cpu_decides_and_every_size_is_projected() -> None:
    shards = [shard(1, 9_000.0, 50.0), shard(2, 10_000.0, 60.0), shard(3, 11_000.0, 70.0)]
    sized = sizing(shards, 2.0, 20_000.0)
    assert sized.login_us == 60.0 and sized.bytes_per_session == 1024  # means over the shards
    per_request = 2.0 + 60.0 / sized.reads_per_login
    by_size = {(p.sessions, p.replicas): p for p in sized.projections}
    ten_million = by_size[(10_000_000, 100)]
    assert ten_million.shards_for_cpu == -(-100 * 20_000 * per_request // (SHARD_CORE_SHARE * 1e6))
    assert ten_million.shards_for_memory == -(-10_000_000 * 1024 // (SHARD_MEMORY_GIB * 2**30))
    assert ten_million.shards == max(ten_million.shards_for_cpu, ten_million.shards_for_memory)
    assert by_size[(100_000_000, 1_000)].shards > ten_million.shards > by_size[(1_000_000, 10)].shards - 1
    # A shard that held none of the sessions written says nothing about their size or cost.
    assert (
        sizing([shard(1, 10_000.0, 60.0), ShardCost(2, "redis-2", 0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0)], 2.0, 1.0).login_us
        == 60.0
    )


def test_the_report_states_the_rule_and_the_projection() -> None:
    results = BenchResults(BenchSettings(1.0, 1, 1, 8), topology="cluster")
    results.cluster = sizing(
        [shard(1, 9_000.0, 50.0), shard(2, 10_000.0, 60.0), shard(3, 11_000.0, 70.0)], 2.0, 20_000.0
    )
    text = "\n".join(lines(results))
    assert "Sizing rule, for 100 authenticated requests per login" in text
    assert "| 10,000,000 | 100 |" in text and "redis-shard-2 (redis-2)" in text
