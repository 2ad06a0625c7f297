"""CPU-bound overload: the replicas' own work is the bottleneck, not a slow store.

The replicas are capped to a fraction of a core (`scaleout.lab.cpubound`), so that the capacity wrk
measures is one the open-loop generator in this process can offer five times over. At 1x, 2x and 5x of
it, in session/redis and jwt (with the denylist) modes: only 200 or a fast 503 with `Retry-After`, the
admitted stay quick, nobody waits a second, the replicas' memory stays flat, and all is served again as
soon as the load drops."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import client, new_user

from scaleout.lab.cpubound import cpu_bound_overload
from scaleout.lab.drivers.local import Cluster

pytestmark = pytest.mark.cluster

INFLIGHT = 2  # nginx's max_conns per replica: Little's law, at the capped rate, within the latency goal
SECONDS = 3.0  # per load step here (the demo holds each for 30 s)


@pytest.mark.parametrize("mode", ["session", "jwt"])
def test_cpu_bound_overload_is_shed_fast_and_memory_stays_flat(
    start_cluster: Callable[..., Cluster], tmp_path: Path, mode: str
) -> None:
    revocation = "denylist" if mode == "jwt" else "none"  # both modes ask Redis on every request
    cluster = start_cluster(
        auth_mode=mode, session_store="redis", jwt_revocation=revocation, replica_max_inflight=INFLIGHT
    )
    with client(cluster) as c:
        _, r = new_user(c)
        if mode == "jwt":
            credential = ("Authorization", f"Bearer {r.json()['access_token']}")
        else:
            credential = ("Cookie", f"sid={c.cookies['sid']}")
    pids = [cluster.services[n].pid or 0 for n in cluster.settings.replica_names]
    result = cpu_bound_overload(cluster.settings, pids, credential, tmp_path, SECONDS)
    capacity, runs = result.capacity_per_s, result.runs
    print(
        f"{mode}: capacity {capacity:.0f}/s at {result.cpus} of a core, RSS growth {result.rss_growth_kib} KiB, "
        f"all 200 again after {result.recovery_s} s"
    )
    for x, run in runs.items():
        statuses = run.statuses()
        print(f"  {x}x, {run.describe()}")
        assert set(statuses) <= {"200", "503"}, (x, statuses)  # never a timeout, a reset or another 5xx
        assert run.slowest_ms() < 1000, x
        assert run.admitted_rate() >= 0.3 * capacity, x  # shedding the excess never starves the rest
    for x in (2, 5):
        assert runs[x].admitted_ms(0.99) < 50, x
        assert runs[x].statuses().get("503", 0) > 0, x
    assert all(g < 20_000 for g in result.rss_growth_kib), result.rss_growth_kib  # nothing grows with the excess
    assert result.recovery_s is not None and result.recovery_s < 1.0, result.recovery_s
