"""Kubernetes, offline: every combination of the modes renders (kubectl's kustomize), validates strictly
against the schemas of the pinned Kubernetes minor and the one before it, and keeps the pod rules; what the
manifests run is what the compose stack runs (and tests live)."""

from __future__ import annotations

import base64
import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from scaleout.core.config import ROOT, LBMode, RedisTopology, Settings
from scaleout.lab import k8s
from scaleout.lab.drivers.base import ClusterError


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    workdir = tmp_path_factory.mktemp("k8s")
    return workdir, k8s.check(workdir)


def docs_of(workdir: Path, variant: k8s.Variant) -> list[dict[str, Any]]:
    return k8s.documents((workdir / variant.name / "manifests.yaml").read_text())


def by(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name))


def test_every_combination_renders_validates_and_keeps_the_pod_rules(checked) -> None:
    _, found = checked
    assert len(found) == len(k8s.AUTH_VARIANTS) * len(LBMode) * len(k8s.TOPOLOGIES) == 24
    assert {name: problems for name, problems in found.items() if problems} == {}


def test_the_modes_reach_every_service_through_the_settings(checked) -> None:
    workdir, _ = checked
    v = k8s.Variant("jwt+denylist", LBMode.ip_hash, RedisTopology.sentinel)
    data = by(docs_of(workdir, v), "ConfigMap", "scaleout-settings")["data"]
    assert (data["AUTH_MODE"], data["JWT_REVOCATION"], data["LB_MODE"], data["REDIS_TOPOLOGY"]) == (
        "jwt",
        "denylist",
        "ip_hash",
        "sentinel",
    )
    assert data["SENTINEL_ADDRESSES"].count(":26380") == 3
    memory = by(
        docs_of(workdir, k8s.Variant("session/memory", LBMode.sticky, RedisTopology.single)),
        "ConfigMap",
        "scaleout-settings",
    )
    assert (memory["data"]["SESSION_STORE"], memory["data"]["LB_MODE"]) == ("memory", "sticky")


def test_replicas_is_the_statefulsets_replicas_and_nginx_renders_one_upstream_per_pod(tmp_path: Path) -> None:
    from scaleout.lab import nginx

    settings = Settings(cluster_dir=tmp_path, replicas=5, replica_port=8000)
    docs = k8s.documents(k8s.render(settings, tmp_path / "five").read_text())
    assert by(docs, "StatefulSet", "api")["spec"]["replicas"] == 5
    conf = nginx.render(settings, "k8s")
    assert re.findall(r"server (api-\d\.api:8000)", conf)[:5] == [f"api-{i}.api:8000" for i in range(5)]


def test_only_the_auth_service_gets_the_signing_keys_and_the_users_database(checked) -> None:
    workdir, _ = checked
    docs = docs_of(workdir, k8s.Variant("jwt", LBMode.round_robin, RedisTopology.single))
    holders = set()
    for d in docs:
        if d["kind"] in ("StatefulSet", "Deployment"):
            text = yaml.safe_dump(d["spec"]["template"])
            if "scaleout-keys" in text:
                holders.add(d["metadata"]["name"])
            if "volumeClaimTemplates" in d["spec"]:
                assert d["metadata"]["name"] == "auth"
    assert holders == {"auth"}


def test_secrets_live_only_in_secrets_and_in_owner_only_files(checked) -> None:
    workdir, _ = checked
    out = workdir / k8s.Variant("session/redis", LBMode.round_robin, RedisTopology.single).name
    password = (out / "secrets" / "redis_password").read_text().strip()
    assert (out / "secrets" / "redis_password").stat().st_mode & 0o077 == 0
    assert (out / "manifests.yaml").stat().st_mode & 0o077 == 0
    docs = k8s.documents((out / "manifests.yaml").read_text())
    for d in docs:
        plain = yaml.safe_dump({k: v for k, v in d.items() if k != "data"} if d["kind"] == "Secret" else d)
        assert password not in plain, d["kind"]
    secret = by(docs, "Secret", "scaleout-redis")
    assert base64.b64decode(secret["data"]["redis_password"]).decode().strip() == password


def test_the_pod_rules_catch_what_they_are_about(checked) -> None:
    workdir, _ = checked
    docs = docs_of(workdir, k8s.Variant("session/redis", LBMode.round_robin, RedisTopology.single))
    broken = copy.deepcopy(docs)
    api = by(broken, "StatefulSet", "api")["spec"]["template"]["spec"]
    del api["securityContext"]["runAsNonRoot"]
    api["containers"][0]["securityContext"]["capabilities"] = {"drop": ["NET_RAW"]}
    del api["containers"][0]["lifecycle"]
    broken = [d for d in broken if not (d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"] == "redis")]
    problems = " | ".join(k8s.pod_rule_violations(broken))
    for expected in ("runAsNonRoot", "capabilities not all dropped", "no preStop pause", "PodDisruptionBudget/redis"):
        assert expected in problems


def test_what_kubernetes_runs_is_what_the_compose_stack_runs(checked) -> None:
    """Parity with docker-compose.yml, which the compose tests run live: the same commands, images, mode
    variables (with the same defaults) and secret mounts."""
    workdir, _ = checked
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    docs = docs_of(workdir, k8s.Variant("session/redis", LBMode.round_robin, RedisTopology.single))

    def container(kind: str, name: str) -> dict[str, Any]:
        return by(docs, kind, name)["spec"]["template"]["spec"]["containers"][0]

    assert container("StatefulSet", "auth")["command"] == compose["auth"]["command"]
    assert container("StatefulSet", "api")["command"] == compose["api-1"]["command"]
    assert container("StatefulSet", "redis")["command"] == compose["redis"]["command"]
    assert container("Deployment", "nginx")["command"] == compose["nginx"]["command"]
    render = by(docs, "Deployment", "nginx")["spec"]["template"]["spec"]["initContainers"][0]["command"]
    assert render == [w if w != "compose" else "k8s" for w in compose["nginx-config"]["command"]]
    defaults = {
        k: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v))
        for k, v in compose["auth"]["environment"].items()
        if k not in ("JWT_SECRET", "PEERS_BY_NAME", "REPLICAS")
    }
    data = by(docs, "ConfigMap", "scaleout-settings")["data"]
    assert {k: data[k] for k in defaults} == defaults
    for kind, name, service in (("StatefulSet", "api", "api-1"), ("StatefulSet", "auth", "auth")):
        mounts = {m["mountPath"] for m in container(kind, name)["volumeMounts"]}
        assert {v.split(":")[1] for v in compose[service]["volumes"]} <= mounts
    images = {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]["image"]
        for d in docs
        if d["kind"] in ("StatefulSet", "Deployment")
    }
    assert images["redis"] == "redis:7.0-alpine" and images["nginx"] == "nginx:1.27-alpine"
    assert images["api"] == images["auth"] == compose["auth"]["image"]


def test_modes_without_manifests_are_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="AUTH_MODE=cookie"):
        k8s.components(Settings(cluster_dir=tmp_path, auth_mode="cookie"))
    with pytest.raises(ClusterError, match="SESSION_STORE=replicated"):
        k8s.components(Settings(cluster_dir=tmp_path, session_store="replicated"))


def test_hs256_hands_the_shared_secret_to_the_auth_service_and_the_replicas_only(tmp_path: Path) -> None:
    settings = Settings(cluster_dir=tmp_path, auth_mode="jwt", jwt_alg="HS256")
    docs = k8s.documents(k8s.render(settings, tmp_path / "hs").read_text())
    assert k8s.pod_rule_violations(docs) == [] and k8s.schema_errors(docs, k8s.KUBERNETES_VERSIONS[0]) == []
    holders = {
        d["metadata"]["name"]
        for d in docs
        if d["kind"] in ("StatefulSet", "Deployment") and "scaleout-jwt-secret" in yaml.safe_dump(d["spec"]["template"])
    }
    assert holders == {"api", "auth"}
    assert by(docs, "ConfigMap", "scaleout-settings")["data"]["JWT_ALG"] == "HS256"


def test_a_redis_cluster_is_refused_with_the_topologies_offered() -> None:
    from scaleout.lab.drivers.base import ClusterError

    with pytest.raises(ClusterError, match="REDIS_TOPOLOGY=cluster has no Kubernetes manifests"):
        k8s.components(Settings(redis_topology="cluster"))
