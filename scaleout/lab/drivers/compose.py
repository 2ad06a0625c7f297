"""The compose driver: `make compose-up|down|status|lb|stop|start`, on the same compose file, settings and
nginx template as `docker compose up`. What it needs first (the engine, Compose v2, the images) comes from
`scaleout/lab/engine.py`."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import httpx

from scaleout.core.config import ROOT, LBMode, Settings
from scaleout.lab.drivers.base import ClusterError, Say, ServiceStatus
from scaleout.lab.engine import (
    MODE_VARIABLES,
    ComposeError,
    Engine,
    compose_command,
    docker,
    engine_answers,
    ensure_engine,
    ensure_images,
    install_compose_plugin,
    live_lb_mode,
    mode_environment,
    prune_images,
    run,
)
from scaleout.lab.faults import TARGETS, Fault, change
from scaleout.lab.nginx import PROBE_PORT
from scaleout.lab.processes import CLK_TCK, cpu_ticks
from scaleout.lab.topology import ClusterTopology, Shard, Topology, cli_line, cli_reply

COMPOSE_FILE = ROOT / "docker-compose.yml"
SENTINEL_FILE = ROOT / "docker-compose.sentinel.yml"  # the override for REDIS_TOPOLOGY=sentinel
CLUSTER_FILE = ROOT / "docker-compose.cluster.yml"  # the override for REDIS_TOPOLOGY=cluster
REDIS_SERVICES = ("redis", "redis-2", "redis-3")  # docker-compose.sentinel.yml; `redis` alone otherwise
CLUSTER_NODES = ("redis", "redis-2", "redis-3", "redis-4", "redis-5", "redis-6")  # docker-compose.cluster.yml
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")
REDIS_PORT, SENTINEL_PORT = 6380, 26380  # inside the containers (docker-compose*.yml), whatever the host uses
PROJECT = "scaleout"  # the compose file's `name:`: plain `docker compose` and these verbs act on one stack
# What a stack of three named replicas cannot show (REPLICAS is fixed at 3 in the compose file).
CANNOT_RUN = {
    "replication_growth": "the compose file runs three named replicas; REPLICAS cannot grow there",
    "overload": "it caps the replicas' CPU as local processes (a cgroup per run)",
}
PROXY_STATE = "/tmp/faults/{target}.json"  # in the proxy's own container


def default_project() -> str:
    """The project `docker compose` itself would use here: COMPOSE_PROJECT_NAME, else the file's name."""
    return os.environ.get("COMPOSE_PROJECT_NAME") or PROJECT


class Stack:
    """One compose project (`-p NAME`): the cluster driver for containers on one engine."""

    def __init__(self, settings: Settings, project: str | None = None, say: Say = print) -> None:
        self.settings = settings
        self.project = project or default_project()
        self.say = say
        self.env: dict[str, str] = {}

    @classmethod
    def attach(cls, settings: Settings, project: str | None = None, say: Say = print) -> Stack:
        """The stack as it runs: its modes are read from its containers (and nginx's live balancer mode), not
        from this command's environment, so `compose-stop SERVICE=redis` after a `compose-up
        REDIS_TOPOLOGY=sentinel` means the primary without the variable typed again."""
        stack = cls(settings, project, say)
        running = stack.running_settings()
        if running is None:
            raise ComposeError(f"no compose stack {stack.project!r} is running: `make compose-up` starts one")
        stack.settings = running
        return stack

    def _containers(self) -> dict[str, Any]:
        """This project's containers, by service, as `docker inspect` describes them (its JSON, untyped)."""
        ids = run([docker(), "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={self.project}"])
        if not ids.split():
            return {}
        found = json.loads(run([docker(), "inspect", *ids.split()]))
        return {c["Config"]["Labels"].get("com.docker.compose.service", ""): c for c in found}

    def running_settings(self) -> Settings | None:
        """The settings the stack's containers run with; None when the project has no container."""
        by_service = self._containers()
        if not by_service:
            return None
        update: dict[str, object] = {
            "redis_topology": (
                "sentinel" if "sentinel-1" in by_service else "cluster" if "redis-6" in by_service else "single"
            ),
            "fault_proxy": "auth-proxy" in by_service,
        }
        api = next((by_service[n] for n in sorted(by_service) if n.startswith("api-")), None)
        if api is not None:
            env = dict(e.split("=", 1) for e in api["Config"]["Env"] if "=" in e)
            update |= {k.lower(): env[k] for k in MODE_VARIABLES if k in env}
        nginx = by_service.get("nginx") or {}
        bindings = nginx.get("HostConfig", {}).get("PortBindings") or {}
        published = [b.get("HostPort") for b in bindings.get("8080/tcp") or [] if b.get("HostPort")]
        if published:
            update["nginx_port"] = int(published[0])
        settings = Settings.model_validate({**self.settings.model_dump(), **update})
        live = live_lb_mode(settings.nginx_port)  # `compose-lb` re-renders nginx, not the replicas' env
        return settings.model_copy(update={"lb_mode": live}) if live else settings

    def prepare(self) -> Engine:
        engine = ensure_engine(self.settings, self.say)
        install_compose_plugin(self.say)
        self.env = ensure_images(self.say)
        return engine

    def _compose(self, *args: str, timeout: float = 600, extra: dict[str, str] | None = None) -> str:
        files = ["-f", str(COMPOSE_FILE)]
        files += ["-f", str(SENTINEL_FILE)] if self.settings.sentinel else []
        files += ["-f", str(CLUSTER_FILE)] if self.settings.cluster else []
        argv = [*compose_command(), *files, "-p", self.project, *args]
        return run(argv, timeout=timeout, env={**self.env, **self.modes(), **(extra or {})})

    def modes(self) -> dict[str, str]:
        s = self.settings
        values = mode_environment(s)
        if s.jwt_secret:
            values["JWT_SECRET"] = s.jwt_secret
        values["COMPOSE_PROFILES"] = ",".join(f"{t}-faults" for t in self._proxied())
        values |= {f"{t.upper()}_HOST": f"{t}-proxy" if t in self._proxied() else t for t in TARGETS}
        return values

    def _proxied(self) -> list[str]:
        """What the services reach through a fault proxy: none without FAULT_PROXY, and Redis only as one
        server (with Sentinels, the services go to whatever address the Sentinels name; on a Redis Cluster, to
        the addresses its nodes announce)."""
        if not self.settings.fault_proxy:
            return []
        return ["auth"] if self.settings.sentinel or self.settings.cluster else ["redis", "auth"]

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.nginx_port}"

    def up(self, progress: Say | None = None) -> None:
        if progress is not None:
            self.say = progress
        if refusal := self.settings.cookie_mode_refusal():
            raise ComposeError(refusal)  # before anything is built or started
        self.prepare()
        self._compose("up", "-d", "--build", "--wait", "--remove-orphans", timeout=1200)
        if unwanted := [f"{t}-proxy" for t in TARGETS if t not in self._proxied()]:  # FAULT_PROXY switched off
            self._compose("rm", "--stop", "--force", *unwanted, extra={"COMPOSE_PROFILES": "*"})
        prune_images()
        self._reload_nginx()  # a re-run picks up the re-rendered config and the recreated replicas' addresses
        self._wait_through_nginx()
        if self.settings.sentinel:
            self.topology().wait_settled(60.0)
        if self.settings.cluster:
            self.cluster_topology().wait_settled(60.0)

    # --- the Redis topology, asked inside the containers ----------------------------------------

    def redis_cli(self, service: str, *command: str, json_reply: bool = False) -> str:
        """One command, authenticated as the operator, inside a Redis or Sentinel container (its raw output).
        The password comes from the container's own secret file, never a command line."""
        s = self.settings
        port, user = (SENTINEL_PORT, "default") if service in SENTINELS else (REDIS_PORT, s.redis_admin_username)
        line = cli_line("/secrets/redis_admin_password", port, user, command, json_reply)
        return self._compose("exec", "-T", service, "sh", "-c", line, timeout=20)

    def _ask(self, node: str, *command: str) -> object:
        """A reply of the same shape as the local driver's sockets give (`redis-cli --json`, RESP2)."""
        try:
            out = self.redis_cli(node, *command, json_reply=True)
        except ComposeError:
            return None
        return cli_reply(out)

    def _addresses(self, service: str) -> list[str]:
        found = self._containers().get(service)
        if found is None:
            return []
        networks = found["NetworkSettings"]["Networks"].values()
        port = SENTINEL_PORT if service in SENTINELS else REDIS_PORT
        return [f"{n['IPAddress']}:{port}" for n in networks if n.get("IPAddress")]

    def topology(self) -> Topology:
        return Topology(
            list(REDIS_SERVICES), list(SENTINELS), self.settings.sentinel_master, self._ask, self._addresses
        )

    def cluster_topology(self) -> ClusterTopology:
        return ClusterTopology(list(CLUSTER_NODES), self._ask, self._addresses)

    def shards(self) -> list[Shard]:
        return self.cluster_topology().shards() if self.settings.cluster else []

    def primary(self) -> str | None:
        """The Redis service that is primary now, as the Sentinels say (sentinel topology; a Redis Cluster's
        first shard's), else `redis`."""
        if self.settings.cluster:
            return next((shard.primary for shard in self.shards()), None)
        return self.topology().primary() if self.settings.sentinel else "redis"

    def role(self, service: str) -> str | None:
        """`master` or `slave` as the Redis in `service` says; None when it does not answer."""
        reply = self._ask(service, "ROLE")
        return str(reply[0]) if isinstance(reply, list) and reply else None

    def _running(self) -> set[str]:
        return set(self._compose("ps", "--services", "--status", "running").split())

    def _resolve(self, service: str, starting: bool = False) -> str:
        if not self.settings.sentinel and not self.settings.cluster:
            return service
        running = self._running()
        if self.settings.cluster:
            return self.cluster_topology().resolve(service, lambda n: n in running, starting)
        return self.topology().resolve(service, lambda n: n in running, starting)

    # --- nginx --------------------------------------------------------------------------------------

    def _wait_through_nginx(self, timeout: float = 60.0) -> None:
        """Until nginx answers on the published port and reaches every replica itself, whatever the
        balancer mode (asked on its probe server, from inside the stack's network)."""
        wanted = set(self.settings.replica_names)
        deadline = time.monotonic() + timeout
        reached: set[str] = set()
        published = False
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{self.public_url}/api/whoami", timeout=2.0, headers={"Connection": "close"})
                published = published or r.status_code == 200
            except httpx.HTTPError:
                pass
            if published:
                reached = self.upstreams_reached()
                if reached >= wanted:
                    return
            time.sleep(0.2)
        raise ComposeError(
            f"nginx did not reach every replica within {timeout:.0f} s "
            f"(published port answered: {'yes' if published else 'no'}; replicas reached: {sorted(reached)})"
        )

    def upstreams_reached(self) -> set[str]:
        """The replicas nginx reaches now, as its probe server says (a Python container of the stack asks)."""
        probe = (
            "import sys, urllib.request as u\n"
            "for name in sys.argv[1:]:\n"
            "    try:\n"
            f"        u.urlopen(f'http://nginx:{PROBE_PORT}/upstream/{{name}}', timeout=2)\n"
            "        print(name)\n"
            "    except Exception:\n"
            "        pass\n"
        )
        running = self._running()
        asker = next((n for n in ("auth", *self.settings.replica_names) if n in running), None)
        if asker is None:
            return set()
        try:
            out = self._compose("exec", "-T", asker, "python", "-c", probe, *self.settings.replica_names, timeout=30)
        except ComposeError:
            return set()
        return set(out.split())

    def _reload_nginx(self) -> None:
        # nginx resolves the replicas' names when it loads its config: after a container is recreated or
        # restarted (it may get another address), a reload finds it again.
        self._compose("exec", "-T", "nginx", "nginx", "-s", "reload", "-c", "/etc/scaleout-nginx/nginx.conf")

    def lb(self, mode: LBMode | str) -> None:
        """Re-render the nginx config in place (the same template), test it, reload nginx gracefully."""
        mode = LBMode(mode)
        self._compose("run", "--rm", "nginx-config", extra={"LB_MODE": str(mode)})
        self._compose("exec", "-T", "nginx", "nginx", "-t", "-q", "-c", "/etc/scaleout-nginx/nginx.conf")
        self._compose("exec", "-T", "nginx", "nginx", "-s", "reload", "-c", "/etc/scaleout-nginx/nginx.conf")
        self.settings = self.settings.model_copy(update={"lb_mode": mode})
        self._wait_mode(mode)

    def _wait_mode(self, mode: str, timeout: float = 15.0) -> None:
        """Until nginx answers in the new mode on several fresh connections in a row (the reload is done)."""
        deadline, streak = time.monotonic() + timeout, 0
        while streak < 5:
            if time.monotonic() > deadline:
                raise ComposeError(f"nginx did not switch to {mode} within {timeout:.0f} s")
            try:
                r = httpx.get(f"{self.public_url}/healthz", timeout=2.0, headers={"Connection": "close"})
                streak = streak + 1 if r.json().get("lb_mode") == mode else 0
            except (httpx.HTTPError, ValueError):
                streak = 0
            time.sleep(0.05)

    # --- lifecycle and faults ---------------------------------------------------------------------

    def down(self) -> list[str]:
        if not engine_answers():
            return []
        removed = sorted(self._containers())
        self._compose("down", "--volumes", "--remove-orphans", timeout=300, extra={"COMPOSE_PROFILES": "*"})
        prune_images()  # what the removed containers still held
        return removed

    def status(self) -> list[ServiceStatus]:
        rows = []
        for service, c in sorted(self._containers().items()):
            state = c["State"]
            health = (state.get("Health") or {}).get("Status")
            running = state.get("Status") == "running"
            published = [
                f"127.0.0.1:{b.get('HostPort')}"
                for b in (c["HostConfig"].get("PortBindings") or {}).get("8080/tcp") or []
            ]
            rows.append(
                ServiceStatus(
                    service,
                    state.get("Pid") or None if running else None,
                    published[0] if published else "(stack network)",
                    running and health in (None, "healthy"),
                    state.get("Status", "") + (f" ({health})" if health else ""),
                )
            )
        return rows

    def stop(self, service: str, kill: bool = False) -> str:
        """Kill one container (a crash, whatever `kill` says); returns the service killed (`redis` may name
        the primary)."""
        service = self._resolve(service)
        self._compose("kill", service)
        return service

    def start(self, service: str) -> str:
        service = self._resolve(service, starting=True)
        if not self.env:  # a later command (attach): the images the stack was started with, not the defaults
            self.env = ensure_images(self.say)
        self._compose("start", service)
        self._compose("up", "-d", "--wait", "--no-recreate", service, timeout=300)
        if service == "auth" or service.startswith("api-"):
            # nginx resolves the names of what it proxies to when it loads its config: a container back with
            # another address is found again by a reload. Only then: a reload while another upstream's
            # container is down fails ("host not found"), and Redis is none of nginx's business.
            self._reload_nginx()
        if service.startswith("api-"):
            self._wait_through_nginx()
        return service

    def fault(self, target: str, kind: str, value: str | None = None) -> Fault:
        change(Fault(), kind, value)  # a wrong fault is the user's one-line error before any container is asked
        if target not in self._proxied() or f"{target}-proxy" not in self._running():
            raise ComposeError(
                f"no fault proxy to {target}: "
                + (
                    f"with REDIS_TOPOLOGY={self.settings.redis_topology} the services reach Redis at the addresses "
                    + ("the Sentinels name" if self.settings.sentinel else "the cluster's nodes announce")
                    if target == "redis" and (self.settings.sentinel or self.settings.cluster)
                    else "the stack runs without its fault proxies (FAULT_PROXY=false): `make compose-up` again"
                )
            )
        state = PROXY_STATE.format(target=target)
        argv = ["python", "-m", "scaleout.lab.faults", "--state", state, "--set", kind, *([value] if value else [])]
        return Fault(**json.loads(self._compose("exec", "-T", f"{target}-proxy", *argv, timeout=30)))

    def faults(self) -> dict[str, Fault]:
        running = self._running()
        out = {}
        for target in self._proxied():
            if f"{target}-proxy" in running:
                state = PROXY_STATE.format(target=target)
                text = self._compose("exec", "-T", f"{target}-proxy", "sh", "-c", f"cat {state} 2>/dev/null || true")
                out[target] = Fault(**json.loads(text)) if text.strip() else Fault()
        return out

    def replica_cpu_seconds(self) -> float:
        """The replicas' CPU, read from their main processes as the host sees them (uvicorn: one process)."""
        found = self._containers()
        pids = [int(found[n]["State"].get("Pid") or 0) for n in self.settings.replica_names if n in found]
        return sum(cpu_ticks(pids).values()) / CLK_TCK

    def logs(self, service: str, lines: int = 50) -> str:
        return self._compose("logs", "--no-color", "--tail", str(lines), service)

    def cannot_run(self, scenario: str) -> str | None:
        return CANNOT_RUN.get(scenario)


__all__ = ["ClusterError", "ComposeError", "Stack"]
