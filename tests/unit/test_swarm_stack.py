"""deploy/swarm/stack.yml read statically: what a Swarm without IPVS needs (no virtual IPs, no routing mesh),
secrets handed out per service as `scaleout.core.secretfiles` says, the mode variables with the settings'
defaults, and nginx's config rendered for the tasks it follows passing `nginx -t`."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from scaleout.core.config import Settings
from scaleout.core.secretfiles import ROLE_FILES
from scaleout.lab.drivers.swarm import (
    CLUSTER_FILE,
    CLUSTER_NODES,
    HS256_FILE,
    MODE_VARIABLES,
    REDIS_NODES,
    SENTINEL_FILE,
    SENTINELS,
    STACK_FILE,
    Swarm,
    redis_nodes,
)
from scaleout.lab.nginx import render
from scaleout.lab.processes import require_program


@pytest.fixture(scope="module")
def stack() -> dict:
    loaded: dict = yaml.safe_load(STACK_FILE.read_text())
    return loaded


def test_every_service_is_reached_by_dns_and_nginx_publishes_in_host_mode(stack: dict) -> None:
    for name, service in stack["services"].items():
        assert service["deploy"]["endpoint_mode"] == "dnsrr", name  # a virtual IP needs IPVS
        assert service["networks"] == ["scaleout"], name
    (port,) = stack["services"]["nginx"]["ports"]
    assert port["mode"] == "host" and port["target"] == 8080  # the routing mesh needs IPVS too
    for pinned in ("redis", "auth", "nginx"):
        assert stack["services"][pinned]["deploy"]["placement"]["constraints"] == ["node.role == manager"]
    api = stack["services"]["api"]
    assert api["deploy"]["replicas"] == "${REPLICAS:-3}" and "placement" not in api["deploy"]
    assert api["environment"]["REPLICA_ID"] == "api-{{.Task.Slot}}"


def test_each_service_gets_only_its_roles_secrets_readable_by_its_uid_alone(stack: dict) -> None:
    role = {"redis": "store", "auth": "auth", "api": "api"}
    declared = {k: v["file"].rsplit("/", 1)[1] for k, v in stack["secrets"].items()}
    for name, service in stack["services"].items():
        mounted = service.get("secrets", [])
        files = {m["target"] for m in mounted}
        if name == "nginx":
            assert files == set(), "nginx needs no secret"
            continue
        assert files <= set(ROLE_FILES[role[name]]), name
        for m in mounted:
            assert (m["uid"], m["gid"], m["mode"]) == ("10001", "10001", 0o400), (name, m)
            assert declared[m["source"]] == m["target"], m
        env = service.get("environment", {})
        assert not any(k == "JWT_SECRET" or k.endswith("PASSWORD") for k in env), name
        assert env.get("SECRETS_DIR", "/run/secrets") == "/run/secrets", name  # where Swarm mounts them
    hs256 = yaml.safe_load(HS256_FILE.read_text())
    assert set(hs256["services"]) == {"auth", "api"}
    assert all(s["secrets"][0]["target"] == "jwt_secret" for s in hs256["services"].values())
    for secret in [*stack["secrets"].values(), *hs256["secrets"].values()]:
        # A Swarm secret cannot change in place: each version of the files has its own name.
        assert secret["name"].startswith("${STACK:-scaleout}_") and "${SECRETS_VERSION:?}" in secret["name"]


def test_the_mode_variables_have_the_settings_defaults(stack: dict) -> None:
    env = stack["services"]["api"]["environment"]
    defaults = Settings()
    for variable in MODE_VARIABLES:
        found = re.fullmatch(r"\$\{(\w+):-(.*)\}", env[variable])
        assert found is not None and found.group(1) == variable, variable
        assert found.group(2) == str(getattr(defaults, variable.lower())), variable
    assert set(Swarm(defaults).modes()) >= set(MODE_VARIABLES)


@pytest.mark.parametrize(
    "settings",
    [
        Settings(session_store="replicated"),
        Settings(auth_mode="cookie"),
    ],
)
def test_what_a_swarm_cannot_run_is_refused_before_anything_starts(settings: Settings, tmp_path: Path) -> None:
    refusal = Swarm(settings.model_copy(update={"cluster_dir": tmp_path})).refusal()
    assert refusal is not None and "\\n" not in refusal


@pytest.mark.parametrize("lb_mode", ["round_robin", "sticky", "ip_hash"])
def test_nginx_config_for_the_tasks_found_passes_nginx_t(lb_mode: str, tmp_path: Path) -> None:
    found = ([("api-1", "127.0.0.1:18001"), ("api-4", "127.0.0.1:18004")], "127.0.0.1:19000")
    text = render(Settings(lb_mode=lb_mode), "swarm", found=found)
    assert "server 127.0.0.1:18004" in text and "# api-4" in text and f"X-LB-Mode {lb_mode}" in text
    if lb_mode == "sticky":
        assert "api-4 pin_api_4;" in text
    conf = tmp_path / "nginx.conf"
    conf.write_text(text.replace("/tmp/nginx.pid", str(tmp_path / "nginx.pid")))
    nginx = require_program("nginx")
    result = subprocess.run(shlex.split(f"{nginx} -t -q -p {tmp_path} -c {conf}"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_sentinel_puts_each_redis_with_its_sentinel_on_a_node_of_its_own() -> None:
    sentinel = yaml.safe_load(SENTINEL_FILE.read_text())
    services = sentinel["services"]
    constraint = {n: services[n].get("deploy", {}).get("placement", {}).get("constraints") for n in services}
    assert constraint["sentinel-1"] == ["node.role == manager"]  # with `redis`, which the base file pins there
    for k in (2, 3):
        pinned = [f"node.hostname == ${{REDIS_NODE_{k}:?the hostname of the {['second', 'third'][k - 2]} Redis node}}"]
        assert constraint[f"redis-{k}"] == constraint[f"sentinel-{k}"] == pinned
    assert redis_nodes("m", ["w2", "w3"]) == {"REDIS_NODE_2": "w2", "REDIS_NODE_3": "w3"}
    assert redis_nodes("m", ["w2"]) == {"REDIS_NODE_2": "w2", "REDIS_NODE_3": "m"}
    assert redis_nodes("m", []) == {"REDIS_NODE_2": "m", "REDIS_NODE_3": "m"}
    for name in (*REDIS_NODES[1:], *SENTINELS):
        s = services[name]
        assert s["deploy"]["endpoint_mode"] == "dnsrr" and s["networks"] == ["scaleout"], name
        assert s["volumes"] == [f"{name}-data:/tmp"], name  # its data, or its rewritten config, outlive a crash
        assert s["environment"]["ASK_SENTINELS"] == "true", name  # a new task follows the primary of the moment
    for name in (*REDIS_NODES, *SENTINELS):
        s = services[name]
        assert s["user"] == "10001:10001" if name != "redis" else "user" not in s  # (the base file's)
        assert {m["target"] for m in s["secrets"]} <= set(ROLE_FILES["store"]), name
        assert all((m["uid"], m["gid"], m["mode"]) == ("10001", "10001", 0o400) for m in s["secrets"]), name
        assert s["configs"][0]["target"] == "/usr/local/lib/sentinel-node.sh", name
        assert not any(k.endswith("PASSWORD") for k in s["environment"]), name
    for name in ("auth", "api"):
        assert services[name]["environment"]["REDIS_TOPOLOGY"] == "sentinel"
    for item in [*sentinel["secrets"].values(), *sentinel["configs"].values()]:
        assert item["name"].startswith("${STACK:-scaleout}_") and "${SECRETS_VERSION:?}" in item["name"]


def test_redis_cluster_puts_each_shards_primary_and_replica_on_two_nodes() -> None:
    cluster = yaml.safe_load(CLUSTER_FILE.read_text())
    services = cluster["services"]
    node = {
        n: services[n].get("deploy", {}).get("placement", {}).get("constraints", ["(base file: a manager)"])
        for n in services
    }
    manager = ["node.role == manager"]
    pinned = {
        k: [f"node.hostname == ${{REDIS_NODE_{k}:?the hostname of the {['second', 'third'][k - 2]} Redis node}}"]
        for k in (2, 3)
    }
    # docker/cluster-create.sh makes redis-4, -5, -6 the replicas of redis, -2, -3: each pair on two nodes, and
    # each node one primary (redis stays on a manager, by the base file).
    assert [node["redis-2"], node["redis-3"]] == [pinned[2], pinned[3]]
    assert [node["redis-4"], node["redis-5"], node["redis-6"]] == [pinned[2], pinned[3], manager]
    for k, name in enumerate(CLUSTER_NODES, start=1):
        s = services[name]
        assert s["command"] == ["redis-server", "/run/secrets/cluster-node.conf"], name
        assert s["volumes"] == [f"cluster-{k}-data:/tmp"], name  # its own, empty at first: not another topology's
        assert {m["target"] for m in s["secrets"]} <= set(ROLE_FILES["store"]), name
        assert all((m["uid"], m["gid"], m["mode"]) == ("10001", "10001", 0o400) for m in s["secrets"]), name
        assert s["configs"][0]["target"] == "/usr/local/lib/cluster-create.sh", name
        assert not any(k.endswith("PASSWORD") for k in s["environment"]), name
        if name != "redis":
            assert s["user"] == "10001:10001" and s["deploy"]["endpoint_mode"] == "dnsrr", name
            assert s["networks"] == ["scaleout"], name
    for name in ("auth", "api", "nginx"):
        env = services[name]["environment"]
        assert env["REDIS_TOPOLOGY"] == "cluster"
        assert env["CLUSTER_ADDRESSES"] == ",".join(f"{n}:6380" for n in CLUSTER_NODES)
    for item in [*cluster["secrets"].values(), *cluster["configs"].values()]:
        assert item["name"].startswith("${STACK:-scaleout}_") and "${SECRETS_VERSION:?}" in item["name"]
