"""The Swarm driver: `make swarm-up|down|status|lb|stop|start|scale`, the cluster as a Docker Swarm stack
(`deploy/swarm/stack.yml`, `docker stack deploy`) on this engine, and with `SWARM_NODES=3` on two more
engines in containers (`scaleout.lab.swarmnodes`).

What `up` changes on the engine is recorded (`<cluster_dir>/swarm/<stack>/state.json`) so that `down` undoes
exactly that: a swarm it initialised is left again, one that was there is left alone, and so are other stacks.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from scaleout.core.config import ROOT, JWTAlg, LBMode, SessionStore, Settings
from scaleout.core.secretfiles import write_cluster_secrets, write_compose_store_configs
from scaleout.lab.drivers.base import Say, ServiceStatus
from scaleout.lab.engine import (
    MODE_VARIABLES,
    ComposeError,
    docker,
    engine_answers,
    ensure_engine,
    ensure_images,
    live_lb_mode,
    mode_environment,
    run,
)
from scaleout.lab.faults import Fault
from scaleout.lab.processes import CLK_TCK, cpu_ticks
from scaleout.lab.topology import ClusterTopology, Shard, Topology, cli_line, cli_reply

STACK_FILE = ROOT / "deploy" / "swarm" / "stack.yml"
HS256_FILE = ROOT / "deploy" / "swarm" / "stack.hs256.yml"  # JWT_ALG=HS256: the shared secret, to api and auth
SENTINEL_FILE = ROOT / "deploy" / "swarm" / "stack.sentinel.yml"  # REDIS_TOPOLOGY=sentinel
SENTINEL_SCRIPT = ROOT / "docker" / "sentinel-node.sh"  # a Swarm config of that file
CLUSTER_FILE = ROOT / "deploy" / "swarm" / "stack.cluster.yml"  # REDIS_TOPOLOGY=cluster
CLUSTER_SCRIPT = ROOT / "docker" / "cluster-create.sh"  # a Swarm config of that file, run in the `redis` task
DOCKERFILE = ROOT / "docker" / "Dockerfile"
IMAGES = {"service": "scaleout:service", "swarm-nginx": "scaleout:swarm-nginx"}  # Dockerfile target -> tag
SERVICES = ("redis", "auth", "api", "nginx")
REDIS_NODES = ("redis", "redis-2", "redis-3")  # REDIS_TOPOLOGY=sentinel (stack.sentinel.yml); `redis` alone otherwise
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")
CLUSTER_NODES = ("redis", "redis-2", "redis-3", "redis-4", "redis-5", "redis-6")  # REDIS_TOPOLOGY=cluster
ALL_STORES = (*CLUSTER_NODES[1:], *SENTINELS)  # every store service beyond the base file's `redis`, any topology
REDIS_PORT, SENTINEL_PORT = 6380, 26380  # inside the tasks
STORE_SECRETS = ("redis-node.conf", "sentinel.conf", "sentinel-master.conf")  # the Sentinel topology's own
IN_CONTAINER = Path("/run/secrets")  # where Swarm mounts a service's secrets
CANNOT_RUN = {
    "replication_growth": "SESSION_STORE=replicated needs the replicas to know each other by name; a Swarm "
    "replica is a task of one service",
    "overload": "it caps the replicas' CPU as local processes (a cgroup per run)",
    "slow_store": "the Swarm stack has no fault proxies",
}


@dataclass
class SwarmState:
    """What `up` changed on the engine, for `down` to undo and nothing more."""

    stack: str
    initialised_swarm: bool = False
    advertise: str = ""
    nodes: list[str] = field(default_factory=list)  # the node containers `SWARM_NODES` added


def default_stack() -> str:
    return os.environ.get("SWARM_STACK") or "scaleout"


class Swarm:
    """One stack on the swarm this engine manages."""

    def __init__(self, settings: Settings, stack: str | None = None, say: Say = print, nodes: int = 1) -> None:
        self.settings = settings
        self.stack = stack or default_stack()
        self.say = say
        self.nodes = nodes
        self.images: dict[str, str] = {}
        # A Redis or Sentinel task's container and the docker command of its node, until it is gone.
        self._cached: dict[str, tuple[list[str], str]] = {}

    # --- what runs --------------------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        return self.settings.cluster_dir / "swarm" / self.stack

    def _state(self) -> SwarmState:
        path = self.state_dir / "state.json"
        if path.exists():
            return SwarmState(**json.loads(path.read_text()))
        return SwarmState(self.stack)

    def _save(self, state: SwarmState) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "state.json").write_text(json.dumps(asdict(state)))

    @classmethod
    def attach(cls, settings: Settings, stack: str | None = None, say: Say = print) -> Swarm:
        """The stack as it runs: its modes read from its services, the balancer from nginx itself."""
        swarm = cls(settings, stack, say)
        running = swarm.running_settings()
        if running is None:
            raise ComposeError(f"no swarm stack {swarm.stack!r} is running: `make swarm-up` starts one")
        swarm.settings = running
        return swarm

    def _service(self, name: str) -> str:
        return f"{self.stack}_{name}"

    @property
    def services(self) -> tuple[str, ...]:
        """The stack's services: with Sentinel, two more Redis and three Sentinels."""
        if self.settings.cluster:
            return (*SERVICES, *CLUSTER_NODES[1:])
        return (*SERVICES, *REDIS_NODES[1:], *SENTINELS) if self.settings.sentinel else SERVICES

    def _inspect(self, name: str) -> dict[str, Any] | None:
        out = run([docker(), "service", "inspect", self._service(name)], check=False)
        found = json.loads(out) if out.strip() else []
        return found[0] if found else None

    def running_settings(self) -> Settings | None:
        if not engine_answers():
            return None
        api = self._inspect("api")
        if api is None:
            return None
        spec = api["Spec"]
        env = dict(e.split("=", 1) for e in spec["TaskTemplate"]["ContainerSpec"].get("Env", []) if "=" in e)
        update: dict[str, object] = {k.lower(): env[k] for k in (*MODE_VARIABLES, "REDIS_TOPOLOGY") if k in env}
        update["replicas"] = spec["Mode"].get("Replicated", {}).get("Replicas", 3)
        nginx = self._inspect("nginx")
        if nginx is not None:
            for port in nginx["Spec"].get("EndpointSpec", {}).get("Ports", []):
                if port.get("TargetPort") == 8080 and port.get("PublishedPort"):
                    update["nginx_port"] = port["PublishedPort"]
        settings = Settings.model_validate({**self.settings.model_dump(), **update})
        live = live_lb_mode(settings.nginx_port)
        return settings.model_copy(update={"lb_mode": live}) if live else settings

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.nginx_port}"

    # --- up and down ------------------------------------------------------------------------------

    def refusal(self) -> str | None:
        s = self.settings
        if refusal := s.cookie_mode_refusal():
            return refusal
        if s.session_store is SessionStore.replicated:
            return "SESSION_STORE=replicated is not offered on a swarm: " + CANNOT_RUN["replication_growth"]
        return None

    def up(self, progress: Say | None = None) -> None:
        if progress is not None:
            self.say = progress
        if refusal := self.refusal():
            raise ComposeError(refusal)
        ensure_engine(self.settings, self.say)
        self.images = ensure_images(self.say)
        state = self._state()
        self._join_or_init(state)
        self._build()
        self._nodes(state)
        env = self._secrets_env()
        files = ["-c", str(STACK_FILE)]
        files += ["-c", str(HS256_FILE)] if self.settings.jwt_alg is JWTAlg.HS256 else []
        files += ["-c", str(SENTINEL_FILE)] if self.settings.sentinel else []
        files += ["-c", str(CLUSTER_FILE)] if self.settings.cluster else []
        self.say(f"deploying stack {self.stack!r}")
        run(
            [docker(), "stack", "deploy", "--resolve-image", "never", "--prune", *files, self.stack],
            env=env,
            timeout=300,
        )
        self._drop_old_secrets(env["SECRETS_VERSION"])
        self.wait_ready()
        if self.settings.sentinel:
            self.topology().wait_settled(60.0)
        if self.settings.cluster:
            self.form_cluster()

    def form_cluster(self) -> None:
        """The six Redis made three shards the first time, a node that came back empty (its machine replaced)
        added as a replica, then until every shard has a primary and a replica: docker/cluster-create.sh, in
        the `redis` task (the Swarm has no one-shot services to run it as compose does)."""
        self.say("forming the Redis Cluster")
        node_docker, cid = self._task_container("redis")
        out = run([*node_docker, "exec", cid, "sh", "/usr/local/lib/cluster-create.sh"], timeout=180)
        self.say(out.strip().splitlines()[-1] if out.strip() else "")
        self.cluster_topology().wait_settled(60.0)

    def _join_or_init(self, state: SwarmState) -> None:
        swarm = run([docker(), "info", "--format", "{{json .Swarm}}"])
        info = json.loads(swarm)
        if info.get("LocalNodeState") == "active":
            if not info.get("ControlAvailable"):
                raise ComposeError("this engine is a swarm worker: run `make swarm-up` on a manager")
            return
        address = bridge_gateway()
        self.say(f"initialising a swarm on this engine (advertised on {address}; swarm-down leaves it)")
        run([docker(), "swarm", "init", "--advertise-addr", address])
        # A swarm of our own: a node that stops answering is declared down after a few missed heartbeats of
        # a second each, rather than of five (its tasks are rescheduled that much sooner).
        run([docker(), "swarm", "update", "--dispatcher-heartbeat", "1s"])
        state.initialised_swarm = True
        state.advertise = address
        self._save(state)

    def _nodes(self, state: SwarmState) -> None:
        """SWARM_NODES: the worker node containers wanted, running, joined and holding the current images;
        those no longer wanted are removed."""
        from scaleout.lab.swarmnodes import add_node, load_images, node_running, remove_nodes

        wanted = [f"{self.stack}-node-{i}" for i in range(2, self.nodes + 1)]
        if extra := [n for n in state.nodes if n not in wanted]:
            remove_nodes(extra)
        manager = json.loads(run([docker(), "info", "--format", "{{json .Swarm}}"])).get("NodeAddr") or bridge_gateway()
        token = run([docker(), "swarm", "join-token", "-q", "worker"]).strip() if wanted else ""
        state.nodes = [n for n in state.nodes if n in wanted]
        for node in wanted:
            if node not in state.nodes or not node_running(node):
                self.say(f"starting node {node} (a Docker engine in a container) and joining it")
                state.nodes = [*state.nodes, node] if node not in state.nodes else state.nodes
                self._save(state)  # recorded before it exists, so that down removes even a half-made node
                add_node(node, manager, token, self.say)
            # Replicas run beyond the manager, and with Sentinel a Redis and a Sentinel on each node.
            several = self.settings.sentinel or self.settings.cluster
            redis = [self.images.get("REDIS_IMAGE", "redis:7.0-alpine")] if several else []
            load_images(node, [IMAGES["service"], *redis], self.say)
        self._save(state)

    def _build(self) -> None:
        args = ["--build-arg", f"PYTHON_IMAGE={self.images.get('PYTHON_IMAGE', 'python:3.11-slim')}"]
        for target, tag in IMAGES.items():
            self.say(f"building {tag}")
            run(
                [docker(), "build", "-q", "-f", str(DOCKERFILE), "--target", target, "-t", tag, *args, str(ROOT)],
                timeout=1200,
            )

    def container_settings(self) -> Settings:
        """The settings as the containers see them: default ports, service names, secrets under this stack's
        state directory on the manager (owner-only), from which Swarm secrets are made."""
        s = self.settings
        return Settings(
            auth_mode=s.auth_mode,
            session_store=s.session_store,
            jwt_alg=s.jwt_alg,
            jwt_revocation=s.jwt_revocation,
            jwt_secret=s.jwt_secret,
            redis_persistence=s.redis_persistence,
            redis_topology=s.redis_topology,
            session_cache=s.session_cache,
            max_sessions_per_user=s.max_sessions_per_user,
            cluster_dir=self.state_dir,
            secrets_dir=self.state_dir / "secrets",
        )

    def _secrets_env(self) -> dict[str, str]:
        cs = self.container_settings()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        write_cluster_secrets(cs)
        write_compose_store_configs(cs, secrets_seen_at=IN_CONTAINER)
        names = ["redis_password", "redis_admin_password", "redis.acl", "redis.conf", "session_key"]
        if cs.jwt_alg is JWTAlg.HS256:
            names.append("jwt_secret")
        files = [cs.secrets_path / name for name in names]
        if cs.sentinel:
            files += [cs.secrets_path / name for name in STORE_SECRETS] + [SENTINEL_SCRIPT]
        if cs.cluster:
            files += [cs.secrets_path / "cluster-node.conf", CLUSTER_SCRIPT]
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        return {
            **self.images,
            **self.modes(),
            **self.redis_placement(),
            "SECRETS_DIR": str(cs.secrets_path),
            "SECRETS_VERSION": digest.hexdigest()[:12],
        }

    def redis_placement(self) -> dict[str, str]:
        """REDIS_NODE_2 and REDIS_NODE_3: the nodes (by hostname) of the second and third Redis, each with its
        Sentinel (or, on a Redis Cluster, with the replica of the shard before). The first stays on the
        manager; with three nodes no two Redis primaries share one."""
        if not self.settings.sentinel and not self.settings.cluster:
            return {}
        return redis_nodes(run([docker(), "info", "--format", "{{.Name}}"]).strip(), self._state().nodes)

    def modes(self) -> dict[str, str]:
        return {**mode_environment(self.settings), "REPLICAS": str(self.settings.replicas), "STACK": self.stack}

    def _stack_secrets(self) -> list[str]:
        out = run(
            [
                docker(),
                "secret",
                "ls",
                "--filter",
                f"label=com.docker.stack.namespace={self.stack}",
                "--format",
                "{{.Name}}",
            ]
        )
        return out.split()

    def _drop_old_secrets(self, version: str) -> None:
        """Secrets of an earlier deploy (another version): removed once no task uses them."""
        old = [n for n in self._stack_secrets() if not n.endswith(f"_{version}")]
        deadline = time.monotonic() + 60
        while old and time.monotonic() < deadline:
            for name in list(old):
                if run([docker(), "secret", "rm", name], check=False) or not self._has_secret(name):
                    old.remove(name)
            if old:
                time.sleep(0.5)

    @staticmethod
    def _has_secret(name: str) -> bool:
        return bool(run([docker(), "secret", "ls", "-q", "--filter", f"name={name}"], check=False).strip())

    def down(self) -> list[str]:
        if not engine_answers():
            return []
        state = self._state()
        removed = [s for s in (*SERVICES, *ALL_STORES) if self._inspect(s) is not None]
        if removed:
            run([docker(), "stack", "rm", self.stack], timeout=120)
            self._wait_gone()
        for name in self._stack_secrets():
            run([docker(), "secret", "rm", name], check=False)
        cluster = [f"cluster-{k}-data" for k in range(1, len(CLUSTER_NODES) + 1)]
        for volume in ("auth-data", "redis-data", *(f"{n}-data" for n in (*REDIS_NODES[1:], *SENTINELS)), *cluster):
            run([docker(), "volume", "rm", "-f", f"{self.stack}_{volume}"], check=False)
        if state.nodes:
            from scaleout.lab.swarmnodes import remove_nodes

            remove_nodes(state.nodes)
        if state.initialised_swarm:
            run([docker(), "swarm", "leave", "--force"], check=False)
        (self.state_dir / "state.json").unlink(missing_ok=True)
        return removed

    def _wait_gone(self, timeout: float = 90.0) -> None:
        """Until the stack's containers and network are gone (`docker stack rm` returns before)."""
        label = f"label=com.docker.stack.namespace={self.stack}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            containers = run([docker(), "ps", "-aq", "--filter", label], check=False).split()
            networks = run([docker(), "network", "ls", "-q", "--filter", label], check=False).split()
            if not containers and not networks:
                return
            time.sleep(0.5)
        raise ComposeError(f"the stack {self.stack!r} did not go within {timeout:.0f} s")

    # --- readiness --------------------------------------------------------------------------------

    def _tasks(self) -> list[dict[str, str]]:
        fmt = "{{json .}}"
        out = run(
            [docker(), "stack", "ps", self.stack, "--filter", "desired-state=running", "--format", fmt, "--no-trunc"],
            check=False,
        )
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def _converged(self) -> bool:
        out = run([docker(), "stack", "services", self.stack, "--format", "{{.Name}} {{.Replicas}}"], check=False)
        rows = [line.split() for line in out.splitlines() if line.strip()]
        if {r[0] for r in rows} != {self._service(s) for s in self.services}:
            return False
        for _, replicas in rows:
            running, _, wanted = replicas.partition("/")
            if running != wanted.split()[0]:
                return False
        # A redeploy's rolling update: "n/n" holds while old tasks are still being replaced.
        out = run(
            [
                docker(),
                "service",
                "inspect",
                *(self._service(s) for s in self.services),
                "--format",
                "{{json .UpdateStatus}}",
            ]
        )
        for line in out.splitlines():
            update = json.loads(line) if line.strip() not in ("", "null") else None
            if update and update.get("State") not in ("completed", "rollback_completed", None):
                return False
        return True

    def nginx_container(self) -> str:
        found = run(
            [docker(), "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={self._service('nginx')}"]
        ).split()
        if not found:
            raise ComposeError(f"no nginx task of {self.stack!r} runs on this engine")
        return found[0]

    def view(self) -> dict[str, Any]:
        """What nginx runs with now: its balancer mode, the replicas by name and address, those it reached."""
        try:
            out = run(
                [docker(), "exec", self.nginx_container(), "python", "-m", "scaleout.lab.swarmnginx", "--view"],
                timeout=30,
            )
            found: dict[str, Any] = json.loads(out)
            return found
        except (ComposeError, ValueError):
            return {}

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Until every service has its tasks running and nginx reaches exactly the replicas wanted."""
        wanted = set(self.settings.replica_names)
        deadline = time.monotonic() + timeout
        view: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self._converged():
                view = self.view()
                names = {n for n, _ in view.get("replicas", [])}
                if names == wanted and set(view.get("reached", [])) == wanted and self._answers():
                    return
            time.sleep(0.5)
        raise ComposeError(
            f"the stack did not become ready within {timeout:.0f} s (nginx sees {view.get('replicas')}, "
            f"reached {view.get('reached')}; wanted {sorted(wanted)})"
        )

    def _answers(self) -> bool:
        try:
            return (
                httpx.get(f"{self.public_url}/api/whoami", timeout=2.0, headers={"Connection": "close"}).status_code
                == 200
            )
        except httpx.HTTPError:
            return False

    # --- the verbs ---------------------------------------------------------------------------------

    def status(self) -> list[ServiceStatus]:
        rows = []
        for t in self._tasks():
            service, _, slot = t["Name"].removeprefix(f"{self.stack}_").partition(".")
            name = f"api-{slot}" if service == "api" else service
            state = t.get("CurrentState", "")
            rows.append(
                ServiceStatus(
                    f"{name}@{t.get('Node', '?')}",
                    None,
                    t.get("Ports") or "(overlay)",
                    state.startswith("Running"),
                    state,
                )
            )
        return sorted(rows, key=lambda r: r.service)

    def lb(self, mode: LBMode | str) -> None:
        mode = LBMode(mode)
        run(
            [docker(), "exec", self.nginx_container(), "python", "-m", "scaleout.lab.swarmnginx", "--lb", str(mode)],
            timeout=30,
        )
        self.settings = self.settings.model_copy(update={"lb_mode": mode})
        deadline, streak = time.monotonic() + 15, 0
        while streak < 5:
            if time.monotonic() > deadline:
                raise ComposeError(f"nginx did not switch to {mode} within 15 s")
            streak = streak + 1 if live_lb_mode(self.settings.nginx_port) == str(mode) else 0
            time.sleep(0.05)

    def scale(self, replicas: int) -> None:
        """`swarm-scale REPLICAS=N`: the api service to N tasks; returns once nginx reaches exactly those."""
        self.settings = self.settings.model_copy(update={"replicas": Settings(replicas=replicas).replicas})
        run([docker(), "service", "scale", "--detach", f"{self._service('api')}={replicas}"], timeout=60)
        self.wait_ready()

    def _task_container(self, service: str, slot: str | None = None) -> tuple[list[str], str]:
        """The docker command of the node a running task is on, and the task's container there."""
        for t in self._tasks():
            name = t["Name"].removeprefix(f"{self.stack}_")
            if name == (f"{service}.{slot}" if slot else f"{service}.1") or (
                slot is None and name.startswith(f"{service}.")
            ):
                node_docker = self._node_docker(t.get("Node", ""))
                cid = run([*node_docker, "ps", "-q", "--filter", f"label=com.docker.swarm.task.id={t['ID']}"]).split()
                if cid:
                    return node_docker, cid[0]
        raise ComposeError(f"no running task of {service}{'.' + slot if slot else ''} in {self.stack!r}")

    def _node_docker(self, node: str) -> list[str]:
        """`docker` on the engine that is `node`: this one, or one of the node containers."""
        from scaleout.lab.swarmnodes import node_docker

        return node_docker(node) if node in self._state().nodes else [docker()]

    def kill_node(self, node: str) -> None:
        """A whole worker node lost at once (its container killed, the engine in it with it)."""
        if node not in self._state().nodes:
            raise ComposeError(f"{node!r} is not one of this stack's node containers: {self._state().nodes}")
        run([docker(), "kill", node])

    def node_states(self) -> dict[str, str]:
        """Every swarm node by hostname, as the manager sees it (ready, down)."""
        out = run([docker(), "node", "ls", "--format", "{{.Hostname}} {{.Status}}"])
        return dict(line.split(None, 1) for line in out.splitlines() if line.strip())

    def stop(self, service: str, kill: bool = False) -> str:
        """A replica (`api-N`): its task's container is killed, and the Swarm starts another in its slot (a
        crash, as a Swarm sees one); with `kill`, on a worker node, the whole node crashes with it (the
        machine lost, and every replica on it). `redis` (with Sentinel: the primary now, or `redis-2` and the
        like, a Sentinel; on a Redis Cluster `redis-shard-N`, that shard's primary now), `auth`, `nginx`:
        scaled to 0 until `start`, or with `kill` crashed (the Swarm starts another task)."""
        if service.startswith("api-") and service[4:].isdigit():
            node = next((r.service.split("@")[1] for r in self.status() if r.service.startswith(f"{service}@")), "")
            if kill and node in self._state().nodes:
                self.say(f"killing node {node}, and with it {service}")
                self.kill_node(node)
                return service
            node_docker, cid = self._task_container("api", service[4:])
            run([*node_docker, "kill", cid])
            return service
        service = self._resolve(service)
        if kill:
            # A crash: the Swarm starts another task in its place (with Sentinel, a Redis comes back as a
            # replica of whichever the Sentinels elected meanwhile).
            node_docker, cid = self._task_container(service)
            run([*node_docker, "kill", cid])
            self._cached.pop(service, None)
            return service
        node = next((r.service.split("@")[1] for r in self.status() if r.service.startswith(f"{service}@")), "")
        run([docker(), "service", "scale", "--detach", f"{self._service(service)}=0"], timeout=60)
        self._cached.pop(service, None)
        # Its task is marked to shut down at once, but its container stops later: returns once it has.
        node_docker = self._node_docker(node)
        label = f"label=com.docker.swarm.service.name={self._service(service)}"
        deadline = time.monotonic() + 30
        while run([*node_docker, "ps", "-q", "--filter", label], check=False).strip():
            if time.monotonic() > deadline:
                raise ComposeError(f"{service} did not stop within 30 s")
            time.sleep(0.1)
        return service

    def _known(self, service: str) -> None:
        """One line for a name that is no service of this stack (`api` alone is none: a replica is api-N)."""
        if service not in self.services or service == "api":
            raise ComposeError(f"no service {service!r}: api-N, {', '.join(s for s in self.services if s != 'api')}")

    def _resolve(self, service: str) -> str:
        """The service a verb names: `redis` is the primary now with Sentinel (`redis-2` and the like, and the
        Sentinels, stand for themselves); on a Redis Cluster `redis-shard-N` is that shard's primary now."""
        if self.settings.cluster:
            service = self.cluster_topology().resolve(service, lambda n: True)  # other names: themselves
        self._known(service)
        if self.settings.sentinel and service == "redis":
            return self.topology().resolve(service, lambda n: True)
        return service

    def _scaled_to_zero(self) -> list[str]:
        out = run(
            [
                docker(),
                "service",
                "ls",
                "--filter",
                f"label=com.docker.stack.namespace={self.stack}",
                "--format",
                "{{.Name}} {{.Replicas}}",
            ],
            check=False,
        )
        rows = [line.split() for line in out.splitlines() if line.strip()]
        return [name.removeprefix(f"{self.stack}_") for name, replicas, *_ in rows if replicas.endswith("/0")]

    def start(self, service: str) -> str:
        if service.startswith("api-"):
            self.wait_ready()  # the Swarm brings a replica back by itself
            return service
        stopped = self._scaled_to_zero()
        if self.settings.cluster:
            # `redis-shard-N`: the node that was stopped (the shard's primary then; its replica has taken over).
            service = self.cluster_topology().resolve(service, lambda n: n not in stopped, starting=True)
        self._known(service)
        if self.settings.sentinel and service == "redis" and "redis" not in stopped:
            # `redis` names the one that was stopped; a crashed one the Swarm brings back by itself.
            service = next((n for n in REDIS_NODES if n in stopped), service)
        if service in stopped:
            run([docker(), "service", "scale", "--detach", f"{self._service(service)}=1"], timeout=60)
        self.wait_ready()
        if self.settings.sentinel:
            self.topology().wait_settled(60.0)
        if self.settings.cluster:
            self.cluster_topology().wait_settled(60.0)
        return service

    def shards(self) -> list[Shard]:
        return self.cluster_topology().shards() if self.settings.cluster else []

    def primary(self) -> str | None:
        """The Redis service that is primary now, as the Sentinels say (sentinel topology; a Redis Cluster's
        first shard's), else `redis`."""
        if self.settings.cluster:
            return next((shard.primary for shard in self.shards()), None)
        return self.topology().primary() if self.settings.sentinel else "redis"

    # --- the Redis topology, asked inside the tasks -------------------------------------------------

    def redis_cli(self, service: str, *command: str, json_reply: bool = False) -> str:
        """One command, authenticated as the operator, inside a Redis or Sentinel task on whichever node it
        runs (its raw output). The password comes from the task's own secret, never a command line."""
        s = self.settings
        port, user = (SENTINEL_PORT, "default") if service in SENTINELS else (REDIS_PORT, s.redis_admin_username)
        line = cli_line(f"{IN_CONTAINER}/redis_admin_password", port, user, command, json_reply)
        if service not in self._cached:
            self._cached[service] = self._task_container(service)
        node_docker, cid = self._cached[service]
        try:
            return run([*node_docker, "exec", cid, "sh", "-c", line], timeout=20)
        except ComposeError:
            self._cached.pop(service, None)  # the task is gone: another container next time
            raise

    def _ask(self, node: str, *command: str) -> object:
        """A reply of the same shape as the local driver's sockets give (`redis-cli --json`, RESP2)."""
        try:
            out = self.redis_cli(node, *command, json_reply=True)
        except ComposeError:
            return None
        return cli_reply(out)

    def _addresses(self, service: str) -> list[str]:
        """Where a Redis or Sentinel task is reached now, on the stack's overlay network."""
        port = SENTINEL_PORT if service in SENTINELS else REDIS_PORT
        try:
            if service not in self._cached:
                self._cached[service] = self._task_container(service)
            node_docker, cid = self._cached[service]
            out = run([*node_docker, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", cid])
        except ComposeError:
            self._cached.pop(service, None)
            return []
        return [f"{a}:{port}" for a in out.split()]

    def topology(self) -> Topology:
        return Topology(list(REDIS_NODES), list(SENTINELS), self.settings.sentinel_master, self._ask, self._addresses)

    def cluster_topology(self) -> ClusterTopology:
        return ClusterTopology(list(CLUSTER_NODES), self._ask, self._addresses)

    def role(self, service: str) -> str | None:
        """`master` or `slave` as the Redis in `service` says; None when it does not answer."""
        reply = self._ask(service, "ROLE")
        return str(reply[0]) if isinstance(reply, list) and reply else None

    def replica_cpu_seconds(self) -> float:
        """The CPU of the replicas on this engine (those on node containers are processes here too)."""
        ids = run(
            [docker(), "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={self._service('api')}"]
        ).split()
        if not ids:
            return 0.0
        pids = [int(p) for p in run([docker(), "inspect", "-f", "{{.State.Pid}}", *ids]).split()]
        return sum(cpu_ticks(pids).values()) / CLK_TCK

    def logs(self, service: str, lines: int = 50) -> str:
        name = "api" if service.startswith("api-") else service
        return run(
            [docker(), "service", "logs", "--no-task-ids", "--tail", str(lines), self._service(name)], check=False
        )

    def fault(self, target: str, kind: str, value: str | None = None) -> Fault:
        raise ComposeError(
            "the swarm stack has no fault proxies: `make fault` acts on `make up`, `make compose-fault` on compose"
        )

    def faults(self) -> dict[str, Fault]:
        return {}

    def cannot_run(self, scenario: str) -> str | None:
        return CANNOT_RUN.get(scenario)


def redis_nodes(manager: str, workers: list[str]) -> dict[str, str]:
    """The nodes of the second and third Redis: the workers in turn, then the manager again (the first Redis
    is the manager's), so that no two share a node while there are nodes enough."""
    hosts = [manager, *workers]
    return {f"REDIS_NODE_{k}": hosts[(k - 1) % len(hosts)] for k in (2, 3)}


def bridge_gateway() -> str:
    """The engine's bridge address (docker0): what a swarm advertises, so node containers can join it. The
    bridge network's IPAM config names it, except on an engine whose bridge existed before it first started
    (seen on Debian's docker.io right after its installation): then the bridge interface's own address."""
    out = run([docker(), "network", "inspect", "bridge", "--format", "{{range .IPAM.Config}}{{.Gateway}} {{end}}"])
    found = [a for a in out.split() if "." in a]
    if not found:
        name = run(
            [
                docker(),
                "network",
                "inspect",
                "bridge",
                "--format",
                '{{index .Options "com.docker.network.bridge.name"}}',
            ]
        ).strip()
        shown = subprocess.run(
            ["ip", "-4", "-o", "addr", "show", name or "docker0"], capture_output=True, text=True, check=False
        ).stdout.split()
        found = [w.split("/")[0] for i, w in enumerate(shown) if i > 0 and shown[i - 1] == "inet"]
    if not found:
        raise ComposeError("the engine's bridge network has no IPv4 gateway to advertise a swarm on")
    return found[0]


__all__ = ["Swarm"]
