"""The local driver: redis-server, the auth service, N API replicas and nginx as plain processes.

Everything it starts is recorded (pid, address, command) in `<cluster_dir>/state.json`, so `down`, `stop`,
`start`, `lb` and `status` work from a later command, on the cluster as it runs, and `down` stops only what
`up` started.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from scaleout.core import redisconf
from scaleout.core.config import COOKIE_MODE_WARNING, ROOT, AuthMode, JWTAlg, LBMode, Settings
from scaleout.core.keys import KeyUnusable
from scaleout.core.secretfiles import write_cluster_secrets, write_secret
from scaleout.lab import nginx
from scaleout.lab.drivers.base import ClusterError, Say, ServiceStatus
from scaleout.lab.faults import TARGETS, Fault, applied_file, fault_file, read_fault, set_fault
from scaleout.lab.ports import port_is_free, settings_env
from scaleout.lab.processes import CLK_TCK, cmdline, cpu_ticks, nginx_workers, pid_alive, require_program, tail
from scaleout.lab.redisadmin import redis_command, redis_ping
from scaleout.lab.topology import ClusterTopology, Shard, Topology

HEALTH_TIMEOUT = 30.0
COOKIE_WARNING = COOKIE_MODE_WARNING  # said by `up`, and by each service in its log
PANEL = "lab"  # the control panel's service name


@dataclass
class Process:
    """One process of the local cluster, as recorded in state.json (what `up` started and how)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    host: str
    port: int
    health: str  # "http" or "redis"
    log: str
    pid: int | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


class Cluster:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = settings.cluster_dir
        self.state_file = self.dir / "state.json"
        self.prefix = self.dir / "nginx"
        self.log_dir = self.dir / "logs"
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._services: dict[str, Process] = {}
        self._panel: Process | None = None

    # --- state ------------------------------------------------------------------------------------

    @classmethod
    def load(cls, cluster_dir: Path) -> Cluster:
        state_file = cluster_dir / "state.json"
        if not state_file.exists():
            raise ClusterError(f"no cluster recorded in {cluster_dir}: run `make up` first.")
        raw = json.loads(state_file.read_text())
        cluster = cls(Settings(**raw["settings"]))
        cluster._services = {k: Process(**v) for k, v in raw["services"].items()}
        return cluster

    def _save(self) -> None:
        state = {
            "settings": self.settings.model_dump(mode="json"),
            "services": {k: asdict(v) for k, v in self._services.items()},
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_file)

    @property
    def services(self) -> dict[str, Process]:
        return self._services

    # --- plan -------------------------------------------------------------------------------------

    def _plan(self) -> dict[str, Process]:
        s = self.settings
        py = sys.executable
        env = settings_env(s)
        if s.auth_mode is AuthMode.cookie:
            env["ALLOW_UNSAFE_COOKIE_MODE"] = "true"  # every service binds loopback, and `up` said the warning
        host = s.host

        def log(name: str) -> str:
            return str(self.log_dir / f"{name}.log")

        services = (
            self._plan_store(log)
            if s.sentinel or s.cluster
            else {
                "redis": Process(
                    "redis",
                    # The password lives in an owner-only ACL file, never on a command line `ps` shows.
                    [
                        require_program("redis-server"),
                        *redisconf.as_args(redisconf.redis_server(s, s.redis_port, self.dir / "redis", bind=host)),
                    ],
                    {},
                    host,
                    s.redis_port,
                    "redis",
                    log("redis"),
                ),
            }
        )
        replica_env = env
        if s.fault_proxy:  # `make fault`: the services' Redis (single topology) and the auth service, proxied
            if not s.sentinel and not s.cluster:
                services["redis-proxy"] = self._proxy("redis", s.redis_proxy_port, s.redis_port, log)
                env = {**env, "REDIS_URL": f"redis://{host}:{s.redis_proxy_port}/0"}
            services["auth-proxy"] = self._proxy("auth", s.auth_proxy_port, s.auth_port, log)
            replica_env = {**env, "AUTH_URL": f"http://{host}:{s.auth_proxy_port}"}
        services["auth"] = Process(
            "auth", [py, "-m", "services.serve", "auth"], env, host, s.auth_port, "http", log("auth")
        )
        for name in s.replica_names:
            services[name] = Process(
                name,
                [py, "-m", "services.serve", "api"],
                {**replica_env, "REPLICA_ID": name},
                host,
                s.api_port(name),
                "http",
                log(name),
            )
        services["nginx"] = Process(
            "nginx",
            [
                require_program("nginx"),
                "-p",
                str(self.prefix),
                "-c",
                str(self.prefix / "nginx.conf"),
                "-g",
                "daemon off;",
            ],
            {},
            host,
            s.nginx_port,
            "http",
            log("nginx"),
        )
        return services

    def _proxy(self, target: str, port: int, upstream: int, log: Callable[[str], str]) -> Process:
        s = self.settings
        argv = [
            sys.executable,
            "-m",
            "scaleout.lab.faults",
            "--listen",
            f"{s.host}:{port}",
            "--upstream",
            f"{s.host}:{upstream}",
            "--state",
            str(fault_file(self.dir, target)),
        ]
        return Process(f"{target}-proxy", argv, {}, s.host, port, "tcp", log(f"{target}-proxy"))

    def fault(self, target: str, kind: str, value: str | None = None) -> Fault:
        """Switch a fault on the running cluster's proxy to `target`; returns the fault now in effect."""
        name = f"{target}-proxy"
        if name not in self._services:
            why = (
                f"with REDIS_TOPOLOGY={self.settings.redis_topology} the services reach Redis at the addresses "
                + ("the Sentinels name" if self.settings.sentinel else "the cluster's nodes announce")
                if target == "redis" and (self.settings.sentinel or self.settings.cluster)
                else "it runs without its fault proxies (FAULT_PROXY=false, or an older `make up`): `make up` again"
            )
            raise ClusterError(f"no fault proxy to {target}: {why}")
        try:
            return set_fault(fault_file(self.dir, target), kind, value)
        except TimeoutError as e:
            raise ClusterError(f"{e} (is {name} running?)") from None

    def faults(self) -> dict[str, Fault]:
        return {t: read_fault(fault_file(self.dir, t)) for t in TARGETS if f"{t}-proxy" in self._services}

    def _plan_store(self, log: Callable[[str], str]) -> dict[str, Process]:
        """Sentinel topology: redis-1 (the first primary), redis-2 and redis-3 replicating it, and three
        Sentinels watching them (quorum 2). Cluster topology: redis-1 to redis-6, three shards of a primary and
        a replica once formed. Their configs hold the password, so they live among the secrets."""
        s = self.settings
        services: dict[str, Process] = {}
        for n, port in enumerate(s.redis_ports, start=1):
            name = f"redis-{n}"
            conf = s.secrets_path / f"{name}.conf"
            argv = [require_program("redis-server"), str(conf)]
            services[name] = Process(name, argv, {}, s.host, port, "redis", log(name))
        for n, port in enumerate(s.sentinel_ports, start=1):
            name = f"sentinel-{n}"
            conf = s.secrets_path / f"{name}.conf"
            services[name] = Process(
                name, [require_program("redis-sentinel"), str(conf)], {}, s.host, port, "sentinel", log(name)
            )
        return services

    def _redis_names(self) -> list[str]:
        return [n for n, svc in self._services.items() if svc.health == "redis"]

    def _write_store_configs(self, replica_of: dict[str, tuple[str, int]], only: list[str] | None = None) -> None:
        """redis-N.conf and sentinel-N.conf (owner-only); `replica_of` says whom each Redis follows at start.

        `only` limits the Redis configs written: a running Redis's config is left as the Sentinels rewrote it."""
        s = self.settings
        if s.cluster:
            for name, bus in zip(self._redis_names(), s.cluster_bus_ports, strict=True):
                # Apart from the Sentinel topology's data: a node that holds keys cannot join a new cluster.
                data = self.dir / "cluster" / name
                data.mkdir(parents=True, exist_ok=True)
                lines = redisconf.cluster_node(s, self._services[name].port, bus, data, bind=s.host)
                write_secret(s.secrets_path / f"{name}.conf", "\n".join(lines) + "\n", replace=True)
            return
        for name in only if only is not None else self._redis_names():
            svc = self._services[name]
            (self.dir / name).mkdir(parents=True, exist_ok=True)
            lines = redisconf.redis_node(s, svc.port, self.dir / name, bind=s.host)
            if name in replica_of:
                lines.append("replicaof {} {}".format(*replica_of[name]))
            write_secret(s.secrets_path / f"{name}.conf", "\n".join(lines) + "\n", replace=True)
        primary = (s.host, s.redis_port)
        followers = [
            (self._services[r].host, self._services[r].port) for r, lead in replica_of.items() if lead == primary
        ]
        for n, port in enumerate(s.sentinel_ports, start=1):
            name = f"sentinel-{n}"
            if self._services[name].pid and pid_alive(self._services[name].pid or 0):
                continue  # a running Sentinel owns (and rewrites) its config
            (self.dir / name).mkdir(parents=True, exist_ok=True)
            lines = [
                *redisconf.sentinel_node(s, port, self.dir / name, bind=s.host),
                *redisconf.sentinel_monitor(s, primary, followers),
            ]
            write_secret(s.secrets_path / f"{name}.conf", "\n".join(lines) + "\n", replace=True)

    def topology(self) -> Topology:
        """The Sentinel topology, asked over sockets as the operator: the administrative user on Redis,
        `default` on the Sentinels (both with the administrative password)."""
        s = self.settings
        sentinels = [n for n, svc in self._services.items() if svc.health == "sentinel"]

        def ask(node: str, *command: str) -> object:
            svc = self._services[node]
            user = "default" if svc.health == "sentinel" else s.redis_admin_username
            return redis_command(svc.host, svc.port, user, s.redis_admin_password(), *command)

        return Topology(self._redis_names(), sentinels, s.sentinel_master, ask, lambda n: [self._services[n].address])

    def cluster_topology(self) -> ClusterTopology:
        """The Redis Cluster topology, asked over sockets as the operator."""
        s = self.settings

        def ask(node: str, *command: str) -> object:
            svc = self._services[node]
            return redis_command(svc.host, svc.port, s.redis_admin_username, s.redis_admin_password(), *command)

        return ClusterTopology(self._redis_names(), ask, lambda n: [self._services[n].address])

    def shards(self) -> list[Shard]:
        return self.cluster_topology().shards() if self.settings.cluster else []

    def primary(self) -> str | None:
        """The name of the Redis that is primary now (sentinel topology: as the Sentinels say; cluster: the
        first shard's)."""
        if self.settings.cluster:
            return next((shard.primary for shard in self.shards()), None)
        return self.topology().primary() if self.settings.sentinel else "redis"

    def wait_topology(self, timeout: float = 30.0) -> None:
        """Until the primary has both replicas in sync and every Sentinel knows the others and the replicas
        (cluster: until every slot is served and every shard has its replica)."""
        if self.settings.cluster:
            self.cluster_topology().wait_settled(timeout)
        else:
            self.topology().wait_settled(timeout)

    def _form_cluster(self, progress: Say) -> None:
        """Six fresh nodes become three shards of a primary and a replica (`redis-cli --cluster create`, as the
        operator; the password in its environment, never on the command line); nodes that met before (their
        state file kept) form again by themselves."""
        s = self.settings
        topology = self.cluster_topology()
        if topology.fresh():
            nodes = [self._services[n].address for n in self._redis_names()]
            argv = [require_program("redis-cli"), "--user", s.redis_admin_username, "--no-auth-warning"]
            argv += ["--cluster", "create", *nodes, "--cluster-replicas", "1", "--cluster-yes"]
            env = {**os.environ, "REDISCLI_AUTH": s.redis_admin_password() or ""}
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
            if done.returncode != 0:
                raise ClusterError(f"redis-cli --cluster create failed: {(done.stdout + done.stderr)[-500:]}")
        try:
            topology.wait_settled(30)
        except ClusterError as exc:
            raise ClusterError(
                f"{exc}: its nodes' state may be from another cluster; `make clean` starts afresh"
            ) from None
        for shard in topology.shards():
            progress(shard.describe())

    # --- lifecycle --------------------------------------------------------------------------------

    def up(self, progress: Say = lambda _: None) -> None:
        """Start the cluster; a cluster already running from this directory is brought to these settings
        (left as it is when it runs them already, else stopped and started again in them)."""
        if self.state_file.exists():
            try:
                previous = Cluster.load(self.dir)
            except (ClusterError, ValueError, TypeError, KeyError):
                previous = None
            running = [
                n for n, svc in (previous.services.items() if previous else ()) if svc.pid and pid_alive(svc.pid)
            ]
            if previous is not None and any(n != PANEL for n in running):
                if previous.settings == self.settings and all(
                    row.healthy for row in previous.status() if row.service != PANEL
                ):
                    self._services = previous.services
                    progress("already running with these settings: nothing to change")
                    return
                changed = describe_change(previous.settings, self.settings) or "a service was down"
                progress(f"a cluster is running from {self.dir}; restarting it ({changed})")
                previous.down(keep=(PANEL,))
            if previous and PANEL in running:  # the control panel outlives a restart in another mode
                self._panel = previous.services[PANEL]
        for d in (self.dir, self.log_dir, self.prefix, self.dir / "redis"):
            d.mkdir(parents=True, exist_ok=True)
        if self.settings.auth_mode is AuthMode.cookie:
            progress(COOKIE_WARNING)
        self._write_secrets()
        for target in TARGETS:  # a cluster starts with no fault switched on
            fault_file(self.dir, target).unlink(missing_ok=True)
            applied_file(fault_file(self.dir, target)).unlink(missing_ok=True)
        self._services = self._plan()
        if self.settings.sentinel or self.settings.cluster:
            first = (self.settings.host, self.settings.redis_port)
            self._write_store_configs({n: first for n in self._redis_names()[1:]})
        if self._panel is not None:
            self._services[PANEL] = self._panel
        # The panel kept through a restart holds its own port: it is not in the way.
        taken = [s for n, s in self._services.items() if n != PANEL and not port_is_free(s.host, s.port)]
        if taken:
            names = ", ".join(f"{s.name} ({s.address})" for s in taken)
            raise ClusterError(f"port already in use for {names}: stop whatever holds it, or pick other ports.")
        self._write_nginx_conf(self.settings.lb_mode)
        self._save()
        try:
            # Replicas start beside the auth service: in jwt mode they wait for its JWKS themselves.
            # The store first, and the fault proxies in front of it and of the auth service.
            store = [n for n, svc in self._services.items() if svc.health in ("redis", "sentinel", "tcp")]
            for group in (store, ["auth", *self.settings.replica_names], ["nginx"]):
                for name in group:
                    self._spawn(self._services[name])
                self._save()
                for name in group:
                    self._wait_healthy(self._services[name])
                    progress(f"{name} healthy on {self._services[name].address}")
                if group is store and self.settings.sentinel:
                    self.wait_topology()
                    progress(f"Sentinels agree: {self.primary()} is the primary, two replicas in sync")
                if group is store and self.settings.cluster:
                    self._form_cluster(progress)
        except BaseException:
            self.down()
            raise

    def down(self, keep: tuple[str, ...] = ()) -> list[str]:
        """Stop every service recorded, by pid. The record on disk is read afresh: another command (the
        panel's restart, a `make start`) may have started a service since this object last looked."""
        if self.state_file.exists():
            # An unreadable record: stop what this object knows of.
            with contextlib.suppress(ClusterError, ValueError, TypeError, KeyError):
                self._services = Cluster.load(self.dir).services
        stopped = []
        for name in reversed(list(self._services)):
            if name not in keep and self._terminate(self._services[name]):
                stopped.append(name)
        self._save()
        return stopped

    def start_panel(self) -> None:
        """The control panel (`make lab`) in the background, recorded like the other services."""
        s = self.settings
        panel = self._services.get(PANEL)
        if panel is not None and panel.pid and pid_alive(panel.pid):
            return
        env = {"CLUSTER_DIR": str(self.dir)}
        argv = [sys.executable, "-m", "scaleout", "lab", "--foreground"]
        panel = Process(PANEL, argv, env, "127.0.0.1", s.lab_port, "http", str(self.log_dir / "lab.log"))
        if not port_is_free(panel.host, panel.port):
            raise ClusterError(f"port {panel.address} for the panel is taken by another process")
        self._services[PANEL] = panel
        self._spawn(panel)
        self._save()
        self._wait_healthy(panel)

    def _resolve(self, name: str, starting: bool = False) -> str:
        """`redis` in the sentinel topology: the primary now (to stop), or a stopped Redis (to start); in the
        cluster topology `redis-shard-N` (and `redis`: shard 1) likewise."""

        def running(node: str) -> bool:
            return bool(self._services[node].pid and pid_alive(self._services[node].pid or 0))

        if self.settings.cluster:
            return self.cluster_topology().resolve(name, running, starting)
        if not self.settings.sentinel:
            return name
        return self.topology().resolve(name, running, starting)

    def stop(self, name: str, kill: bool = False) -> str:
        name = self._resolve(name)
        service = self._get(name)
        if not self._terminate(service, sig=signal.SIGKILL if kill else signal.SIGTERM):
            raise ClusterError(f"{name} is not running")
        self._save()
        return name

    def start(self, name: str) -> str:
        name = self._resolve(name, starting=True)
        service = self._get(name)
        if service.health == "redis" and self.settings.sentinel:
            # A Redis that comes back rejoins as a replica of whichever is primary now, from its first
            # moment: it never claims to be a primary with an empty dataset.
            primary = self.primary()
            if primary is not None and primary != name:
                current = self._services[primary]
                self._write_store_configs({name: (current.host, current.port)}, only=[name])
        if service.pid and pid_alive(service.pid):
            raise ClusterError(f"{name} is already running (pid {service.pid})")
        if not port_is_free(service.host, service.port):
            raise ClusterError(f"port {service.address} for {name} is taken by another process")
        self._spawn(service)
        self._save()
        self._wait_healthy(service)
        return name

    def lb(self, mode: LBMode) -> None:
        """Switch nginx's balancing live: config test, then a graceful reload (in-flight requests finish)."""
        service = self._get("nginx")
        if not (service.pid and pid_alive(service.pid)):
            raise ClusterError("nginx is not running")
        mode = LBMode(mode)
        self.settings = self.settings.model_copy(update={"lb_mode": mode})
        self._write_nginx_conf(mode)
        self._save()
        previous = set(nginx_workers(service.pid))
        os.kill(service.pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            # Done when every worker of the previous config has finished its requests and exited: until
            # then a client on an old keep-alive connection is still balanced by the old config (and a
            # reload to the same mode would otherwise look finished before it even started).
            current = set(nginx_workers(service.pid))
            if current and not current & previous:
                try:
                    r = httpx.get(f"http://{service.address}/healthz", timeout=1.0, headers={"Connection": "close"})
                    if r.json().get("lb_mode") == mode:
                        return
                except (httpx.HTTPError, ValueError):
                    pass
            time.sleep(0.02)
        raise ClusterError(f"nginx did not switch to {mode} within 10 s")

    def rotate_keys(self) -> str:
        """A new signing key for the auth service; the old one stays in the JWKS until its tokens expire.

        Replicas learn the new `kid` from the JWKS the first time they meet a token signed with it.
        """
        from scaleout.core.keys import KeyRing

        s = self.settings
        if s.jwt_alg is JWTAlg.HS256:
            raise ClusterError("HS256 has no key ring: change JWT_SECRET instead")
        kid = KeyRing(s.keys_path, s.jwt_alg, s.access_ttl + s.jwt_leeway).rotate().kid
        self.stop("auth")
        self.start("auth")
        return kid

    def revoke_key(self, kid: str) -> None:
        """Distrust a (compromised) signing key now: the auth service drops it from the JWKS at once, and
        every replica within its JWKS refresh interval, without restarts."""
        from scaleout.core.keys import KeyRing

        s = self.settings
        if s.jwt_alg is JWTAlg.HS256:
            raise ClusterError("HS256 has no key ring: change JWT_SECRET instead")
        try:
            KeyRing(s.keys_path, s.jwt_alg, s.access_ttl + s.jwt_leeway).revoke(kid)
        except KeyError as exc:
            raise ClusterError(f"no key {kid!r} in the ring") from exc

    def status(self) -> list[ServiceStatus]:
        rows = []
        for service in self._services.values():
            alive = bool(service.pid and pid_alive(service.pid))
            rows.append(
                ServiceStatus(
                    service.name, service.pid if alive else None, service.address, alive and self._probe(service)
                )
            )
        return rows

    @property
    def public_url(self) -> str:
        return self.settings.public_url

    def replica_cpu_seconds(self) -> float:
        pids = [self._services[n].pid or 0 for n in self.settings.replica_names if n in self._services]
        return sum(cpu_ticks(pids).values()) / CLK_TCK

    def logs(self, service: str, lines: int = 50) -> str:
        return tail(self._get(service).log, lines)

    def cannot_run(self, scenario: str) -> str | None:
        return None  # every scenario runs on local processes

    # --- helpers ----------------------------------------------------------------------------------

    def _get(self, name: str) -> Process:
        if name not in self._services:
            raise ClusterError(f"unknown service {name!r}; known: {', '.join(self._services)}")
        return self._services[name]

    def _write_secrets(self) -> None:
        try:
            write_cluster_secrets(self.settings)
        except KeyUnusable as exc:
            raise ClusterError(str(exc)) from exc

    def _write_nginx_conf(self, mode: LBMode) -> None:
        conf = self.prefix / "nginx.conf"
        candidate = self.prefix / "nginx.conf.next"
        candidate.write_text(nginx.render(self.settings, "local", mode, prefix=self.prefix))
        nginx.check(require_program("nginx"), self.prefix, candidate)
        candidate.replace(conf)

    def _spawn(self, service: Process) -> None:
        Path(service.log).parent.mkdir(parents=True, exist_ok=True)
        with open(service.log, "ab") as log:
            proc = subprocess.Popen(
                service.argv,
                env={**os.environ, **service.env},
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives `make up` returning; signals from a terminal pass it by
                # Redis and the Sentinels rewrite their configs (CONFIG REWRITE after a failover), which hold
                # the password: whatever they create is the owner's alone.
                umask=0o077 if service.health in ("redis", "sentinel") else -1,
            )
        self._children[proc.pid] = proc
        service.pid = proc.pid

    def _terminate(self, service: Process, sig: signal.Signals = signal.SIGTERM) -> bool:
        pid = service.pid
        service.pid = None
        if not pid or not pid_alive(pid):
            return False
        if Path(service.argv[0]).name not in " ".join(cmdline(pid)):
            return False  # the pid was recycled by something that is not ours: leave it alone
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            self._reap(pid)
            time.sleep(0.02)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
        self._reap(pid, block=True)
        return True

    def _reap(self, pid: int, block: bool = False) -> None:
        proc = self._children.get(pid)
        if proc is None:
            return
        try:
            proc.wait(timeout=5 if block else 0)
            del self._children[pid]
        except subprocess.TimeoutExpired:
            pass

    def _probe(self, service: Process) -> bool:
        if service.health == "sentinel":
            return redis_ping(service.host, service.port, self.settings.redis_username, self.settings.redis_password())
        if service.health == "redis":
            return redis_ping(service.host, service.port, self.settings.redis_username, self.settings.redis_password())
        if service.health == "tcp":
            return not port_is_free(service.host, service.port)
        try:
            return httpx.get(f"http://{service.address}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _wait_healthy(self, service: Process) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT
        while time.monotonic() < deadline:
            if service.pid is None or not pid_alive(service.pid):
                raise ClusterError(f"{service.name} exited during start-up; its log says:\n{tail(service.log)}")
            if self._probe(service):
                return
            time.sleep(0.05)
        raise ClusterError(f"{service.name} not healthy after {HEALTH_TIMEOUT:.0f} s:\n{tail(service.log)}")


def describe_change(before: Settings, after: Settings) -> str:
    """The settings that differ, as VARIABLE=old->new (secrets never shown)."""
    old, new = before.model_dump(mode="json"), after.model_dump(mode="json")
    return ", ".join(f"{k.upper()}={old[k]}->{new[k]}" for k in new if old.get(k) != new[k])
