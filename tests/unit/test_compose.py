"""docker-compose.yml, statically: no Docker engine runs here, so check everything that can drift.

The schema, the build contexts and COPY sources, the commands (they must name modules that import and
verbs the CLI has), the variables (each a Settings field, with the same defaults), and the nginx config
rendered for compose passing `nginx -t` with the service names resolving to loopback.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from scaleout.core import redisconf
from scaleout.core.config import ROOT, Settings
from scaleout.core.secretfiles import write_cluster_secrets
from scaleout.lab.cli import app as cli_app
from scaleout.lab.processes import require_program

COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = Path(sys.prefix) / "share" / "compose_spec.json"
CONTRACT_VARS = ("AUTH_MODE", "SESSION_STORE", "LB_MODE", "JWT_REVOCATION", "JWT_ALG")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _interpolate_defaults(value: object) -> str:
    """`${VAR:-default}` as compose resolves it with VAR unset."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", str(value))


def test_compose_file_is_valid_against_the_compose_schema(compose: dict) -> None:
    import json

    schema = json.loads(SCHEMA.read_text())
    # That schema predates the top-level `name` and `depends_on`'s `restart` and `required` (Compose v2
    # checks them itself, below); the rest must hold.
    older = {k: v for k, v in compose.items() if k != "name"}
    older["services"] = {
        name: {
            **svc,
            **(
                {
                    "depends_on": {
                        d: {k: v for k, v in c.items() if k not in ("restart", "required")}
                        for d, c in svc["depends_on"].items()
                    }
                }
                if isinstance(svc.get("depends_on"), dict)
                else {}
            ),
        }
        for name, svc in compose["services"].items()
    }
    jsonschema.Draft201909Validator(schema).validate(older)


def test_compose_v2_reads_the_file_and_names_the_project_the_verbs_act_on(tmp_path: Path) -> None:
    """`docker compose config` (Compose v2's own validation, no engine needed) with no project given: the
    file's name is the project, the same one `make compose-*` acts on."""
    import json
    import os
    import subprocess

    from scaleout.core.config import Settings
    from scaleout.lab.drivers.compose import PROJECT, Stack

    env = {k: v for k, v in os.environ.items() if k != "COMPOSE_PROJECT_NAME"}
    binary = Path(sys.executable).parent / "docker-compose"
    result = subprocess.run(
        [str(binary), "-f", str(COMPOSE), "config", "--format", "json"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["name"] == PROJECT
    os.environ.pop("COMPOSE_PROJECT_NAME", None)
    assert Stack(Settings(cluster_dir=tmp_path)).project == PROJECT


def test_build_contexts_dockerfiles_and_copy_sources_exist(compose: dict) -> None:
    builds = {
        (svc["build"]["context"], svc["build"]["dockerfile"]) for svc in compose["services"].values() if "build" in svc
    }
    assert builds, "no service builds the project image"
    for context, dockerfile in builds:
        ctx = (ROOT / context).resolve()
        assert ctx.is_dir()
        docker = ctx / dockerfile
        assert docker.is_file()
        copies = [line.split()[1:-1] for line in docker.read_text().splitlines() if line.startswith("COPY ")]
        assert copies
        for sources in copies:
            for source in sources:
                assert (ctx / source).exists(), f"COPY source {source} missing"


def test_every_service_command_names_a_module_that_imports(compose: dict) -> None:
    from typer.testing import CliRunner

    runner = CliRunner()
    checked = 0
    from services.serve import USAGE

    for name, svc in compose["services"].items():
        command = svc.get("command")
        if command and command[:3] == ["python", "-m", "services.serve"]:
            # The service image has the core only: its commands are services.serve's verbs.
            assert len(command) == 4 and command[3] in USAGE.rsplit(" ", 1)[-1].split("|"), name
            if command[3] != "secrets":
                importlib.import_module(f"services.{command[3]}.main")
            assert svc["build"]["target"] == "service", name
            checked += 1
        elif command and command[:3] == ["python", "-m", "scaleout"]:
            # The CLI accepts the verb and its arguments (`--help` parses them without running anything).
            result = runner.invoke(cli_app, [*command[3:], "--help"])
            assert result.exit_code == 0, f"{name}: {result.output}"
            assert svc["build"]["target"] == "lab", name
            checked += 1
    assert checked == 6  # secrets, auth, three replicas, nginx-config


@pytest.mark.parametrize("persistence", ["aof", "none"])
def test_redis_runs_the_local_runners_config(compose: dict, tmp_path: Path, persistence: str) -> None:
    redis = compose["services"]["redis"]
    assert redis["command"] == ["redis-server", "/secrets/redis.conf"]
    # Written by the `secrets` service from the same lines as the local runner's options.
    s = Settings(secrets_dir=tmp_path, peers_by_name=True, redis_port=6380, redis_persistence=persistence)
    write_cluster_secrets(s)
    conf = (tmp_path / "redis.conf").read_text().splitlines()
    assert conf == redisconf.redis_server(s, 6380, "/tmp")
    assert ("appendonly yes" in conf, "appendfsync everysec" in conf) == ((persistence == "aof"),) * 2
    assert 'save ""' in conf and ("appendonly no" in conf) == (persistence == "none")
    # Clients must authenticate: the ACL file comes from the stack's own secrets volume (SECRETS_DIR there is
    # where Redis mounts it), and Redis is never published to the host.
    assert f"aclfile {tmp_path / 'redis.acl'}" in conf
    assert compose["services"]["secrets"]["environment"]["SECRETS_DIR"] == "/secrets"
    assert "store-secrets:/secrets:ro" in redis["volumes"]
    assert (tmp_path / "redis.conf").stat().st_mode & 0o077 == 0
    assert "ports" not in redis
    assert compose["services"]["nginx"]["ports"] == ["127.0.0.1:${NGINX_PORT:-8080}:8080"]


def test_variables_are_settings_with_the_same_defaults(compose: dict) -> None:
    fields = {name.upper() for name in Settings.model_fields}
    defaults = Settings()
    for name, svc in compose["services"].items():
        for var, value in (svc.get("environment") or {}).items():
            assert var in fields, f"{name}: {var} is not a setting"
            if var in CONTRACT_VARS:
                assert _interpolate_defaults(value) == str(getattr(defaults, var.lower())), var
    replicas = [n for n in compose["services"] if n.startswith("api-")]
    assert replicas == defaults.replica_names
    for replica in replicas:
        env = compose["services"][replica]["environment"]
        assert env["REPLICA_ID"] == replica
        port = defaults.api_port(replica)
        assert f":{port}/healthz" in " ".join(compose["services"][replica]["healthcheck"]["test"])
    # Published on loopback only; the host port is NGINX_PORT (default the contract's 8080).
    (published,) = compose["services"]["nginx"]["ports"]
    assert _interpolate_defaults(published) == f"127.0.0.1:{defaults.nginx_port}:{defaults.nginx_port}"


@pytest.mark.parametrize("lb_mode", ["round_robin", "sticky", "ip_hash"])
def test_nginx_config_rendered_for_compose_passes_nginx_t(compose: dict, lb_mode: str, tmp_path: Path) -> None:
    svc = compose["services"]["nginx-config"]
    env = {k: _interpolate_defaults(v) for k, v in svc["environment"].items()}
    env["LB_MODE"] = lb_mode
    out = tmp_path / "nginx.conf"
    args = [a if a != "/etc/scaleout-nginx/nginx.conf" else str(out) for a in svc["command"][1:]]
    subprocess.run(
        [sys.executable, *args],
        env={**os.environ, **env, "CLUSTER_DIR": str(tmp_path)},
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    text = out.read_text()
    assert f"X-LB-Mode {lb_mode}" in text
    hosts = tmp_path / "hosts"
    names = [n for n in compose["services"] if n not in ("nginx", "nginx-config")]
    hosts.write_text("127.0.0.1 localhost " + " ".join(names) + "\n")
    nginx = require_program("nginx")
    test = f"{shlex.quote(nginx)} -t -q -p {tmp_path} -c {out}"
    if os.geteuid() == 0 and shutil.which("unshare"):
        # A private mount namespace where /etc/hosts names the compose services: the host is untouched.
        cmd = ["unshare", "--mount", "sh", "-c", f"mount --bind {hosts} /etc/hosts && {test}"]
    else:
        for n in names:
            text = text.replace(f"server {n}:", "server 127.0.0.1:")
        out.write_text(text)
        cmd = shlex.split(test)
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_hs256_secret_reaches_the_secrets_generator_alone(compose: dict) -> None:
    """`JWT_SECRET` is interpolated into one environment, the generator's, which writes it owner-only into
    the secrets volume; no running service carries it where `docker inspect` shows it."""
    holders = {name for name, svc in compose["services"].items() if "JWT_SECRET" in (svc.get("environment") or {})}
    assert holders == {"secrets"}


def test_the_cluster_override_runs_six_nodes_of_the_local_runners_config(tmp_path: Path) -> None:
    """docker-compose.cluster.yml, merged by Compose v2 itself: six nodes on the config the `secrets` service
    writes from the local runner's lines, formed by the script it mounts, and named to the services."""
    import json
    import subprocess

    from scaleout.lab.drivers.compose import CLUSTER_FILE, CLUSTER_NODES

    binary = Path(sys.executable).parent / "docker-compose"
    merged = subprocess.run(
        [str(binary), "-f", str(COMPOSE), "-f", str(CLUSTER_FILE), "config", "--format", "json"],
        capture_output=True,
        text=True,
    )
    assert merged.returncode == 0, merged.stderr
    services = json.loads(merged.stdout)["services"]
    for node in CLUSTER_NODES:
        assert services[node]["command"] == ["redis-server", "/secrets/cluster-node.conf"]
        assert "ports" not in services[node]
    create = services["cluster-create"]
    assert set(create["depends_on"]) == set(CLUSTER_NODES)
    assert any(v["source"].endswith("docker/cluster-create.sh") for v in create["volumes"])
    assert (ROOT / "docker" / "cluster-create.sh").exists()
    for name in ("secrets", "auth", "api-1", "api-2", "api-3"):
        env = services[name]["environment"]
        assert env["REDIS_TOPOLOGY"] == "cluster"
    named = services["auth"]["environment"]["CLUSTER_ADDRESSES"]
    assert [h for h, _ in Settings(cluster_addresses=named).cluster_hosts] == list(CLUSTER_NODES)
    s = Settings(secrets_dir=tmp_path, peers_by_name=True, redis_port=6380, redis_topology="cluster")
    write_cluster_secrets(s)
    conf = (tmp_path / "cluster-node.conf").read_text().splitlines()
    assert conf == redisconf.cluster_node(s, 6380, 16380, "/tmp")
    assert "cluster-enabled yes" in conf and (tmp_path / "cluster-node.conf").stat().st_mode & 0o077 == 0
    # The services' user may read the slot map and follow a moving slot, in this topology only.
    acl = (tmp_path / "redis.acl").read_text()
    assert "+cluster|slots" in acl and "+asking" in acl and "+cluster|nodes" not in acl
    single = tmp_path / "single"
    write_cluster_secrets(Settings(secrets_dir=single, peers_by_name=True))
    assert "+asking" not in (single / "redis.acl").read_text()
