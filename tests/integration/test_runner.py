"""The local runner's own errors: a missing program and a taken port are named, and nothing is left running."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from helpers import cluster_settings

from scaleout.core.config import LBMode, Settings
from scaleout.lab.drivers.base import ClusterError
from scaleout.lab.drivers.local import Cluster
from scaleout.lab.nginx import render
from scaleout.lab.ports import settings_env
from scaleout.lab.processes import require_program


def test_a_missing_program_is_named_with_the_fix() -> None:
    with pytest.raises(ClusterError, match="'no-such-server' is not installed: run `make setup`"):
        require_program("no-such-server")


def test_a_taken_port_is_reported_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        cluster = Cluster(cluster_settings(tmp_path, nginx_port=port))
        with pytest.raises(ClusterError, match=rf"port already in use for nginx \(127.0.0.1:{port}\)"):
            cluster.up()
    assert all(service.pid is None for service in cluster.services.values())


def test_services_get_every_setting_from_the_environment(tmp_path: Path) -> None:
    settings = cluster_settings(tmp_path, auth_mode="jwt", cookie_secure=True)
    env = settings_env(settings)
    assert env["AUTH_MODE"] == "jwt" and env["COOKIE_SECURE"] == "true"
    assert env["CLUSTER_DIR"] == str(tmp_path)


@pytest.mark.parametrize("mode", list(LBMode))
def test_local_config_names_every_replica_and_the_mode(tmp_path: Path, mode: LBMode) -> None:
    settings = cluster_settings(tmp_path, replicas=4)
    text = render(settings, "local", mode, prefix=tmp_path)
    for name in settings.replica_names:
        assert f"{settings.host}:{settings.api_port(name)}" in text
    assert text.count(f"X-LB-Mode {mode}") >= 3
    assert ("ip_hash;" in text) == (mode is LBMode.ip_hash)
    assert ("$cookie_lb_route" in text) == (mode is LBMode.sticky)


def test_up_again_with_other_settings_brings_the_running_cluster_to_them(tmp_path: Path) -> None:
    import httpx

    first = Cluster(cluster_settings(tmp_path, session_store="memory"))
    said: list[str] = []
    try:
        first.up()
        old_pids = {n: s.pid for n, s in first.services.items()}
        again = Cluster(first.settings)
        again.up(progress=said.append)
        assert said == ["already running with these settings: nothing to change"]
        assert {n: s.pid for n, s in again.services.items()} == old_pids  # nothing restarted
        wanted = {**first.settings.model_dump(), "auth_mode": "jwt", "lb_mode": "sticky", "replicas": 2}
        changed = Cluster(Settings.model_validate(wanted))
        said.clear()
        changed.up(progress=said.append)
        assert "AUTH_MODE=session->jwt" in said[0] and "LB_MODE=round_robin->sticky" in said[0], said
        r = httpx.get(f"{changed.settings.public_url}/api/whoami")
        assert r.json()["auth_mode"] == "jwt" and r.headers["x-lb-mode"] == "sticky"
        assert sorted(Cluster.load(tmp_path).services) == sorted(
            ["redis", "redis-proxy", "auth-proxy", "auth", "api-1", "api-2", "nginx"]
        )
        assert all(not (pid and _alive(pid)) for pid in old_pids.values())  # the old processes are gone
    finally:
        Cluster.load(tmp_path).down()


def _alive(pid: int) -> bool:
    from scaleout.lab.processes import pid_alive

    return pid_alive(pid)
