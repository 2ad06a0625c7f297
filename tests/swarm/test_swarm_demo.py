"""`make demo TARGET=swarm SWARM_NODES=3`, as a user runs it (the CLI, no terminal), on the scenarios whose
faults are the Swarm's own: the sticky scenario loses the node of its busiest replica, and the Sentinel
topology, spread over the three nodes, loses its primary.

`make test-swarm` (CI runs it after `make test`): with CI=true it never skips.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import run_cli

pytestmark = [pytest.mark.cluster, pytest.mark.engine]


def test_the_demo_on_three_swarm_nodes(engine: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    run = run_cli(
        "demo",
        "--target",
        "swarm",
        "--quick",
        "--scenario",
        "sticky",
        "--scenario",
        "store_failover",
        "--out",
        str(out),
        env={"SWARM_NODES": "3", "CLUSTER_DIR": str(tmp_path / "cluster")},
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    scenarios = json.loads((out / "demo.json").read_text())["scenarios"]

    sticky = scenarios["sticky"]["sticky"]
    killed = sticky["killed"]
    # The busiest replica's node, when it is a worker (the manager is never lost: its replica's task is killed).
    node_lost = next((line for line in run.stdout.splitlines() if line.startswith("killing node ")), None)
    assert node_lost is None or node_lost.endswith(f"and with it {killed}"), node_lost
    print(f"sticky: {node_lost or 'the task of ' + killed + ' killed on the manager'}")
    assert sticky["lost_users"] == sticky["pinned_users"] and sticky["lost_users"]  # exactly its users
    assert sticky["failed_5xx"] == 0
    assert sticky["unaffected_success_rate"] == 1.0 and sticky["relogin_ok"]
    assert len(scenarios["sticky"]["ip_hash"]["one_nat_users_per_replica"]) == 1

    failover = scenarios["store_failover"]
    assert failover["new_primary"] not in ("?", failover["killed"])
    assert failover["sessions_lost"] == 0  # acknowledged before the kill: every one still valid
    assert set(failover["during"]) <= {"200", "503"}, failover["during"]  # never 401, never another 5xx
    assert failover["recovery_s"] < 15, failover["recovery_s"]

    # Nothing of the demo's stacks is left on the engine (each scenario's `down`), nor their node containers.
    fmt = '{{.Names}} {{.Label "com.docker.stack.namespace"}}'
    left = subprocess.run(["docker", "ps", "-a", "--format", fmt], capture_output=True, text=True).stdout
    assert not [line for line in left.splitlines() if "scaleoutdemo" in line], left
