"""The local cluster: redis-server, the auth service, N API replicas and nginx as plain processes.

Everything it starts is recorded (pid, address, command) in `<cluster_dir>/state.json`, so `down`, `stop`,
`start`, `lb` and `status` work from a later command, and `down` stops only what `up` started.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from scaleout.core.config import ROOT, AuthMode, JWTAlg, LBMode, Settings
from scaleout.core.keys import KeyUnusable
from scaleout.core.secretfiles import write_cluster_secrets, write_secret
from scaleout.lab import nginx

HEALTH_TIMEOUT = 30.0
COOKIE_WARNING = (
    "WARNING: AUTH_MODE=cookie is unsafe on purpose: the browser carries the username and the password in "
    "the clear, anyone can edit the `user` cookie, and logout cannot revoke anything. A lab mode, bound to "
    "loopback; never do this on a real site."
)
PANEL = "lab"  # the control panel's service name


class ClusterError(Exception):
    pass


@dataclass
class Service:
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


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    service: str
    pid: int | None
    address: str
    healthy: bool


def require_program(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        raise ClusterError(f"'{name}' is not installed: run `make setup` (it installs Debian's {name}).")
    return path


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _listening_range() -> tuple[int, int]:
    """Ports outside the kernel's ephemeral range: an outgoing connection can never take one meanwhile."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return (10000, low - 1) if low > 12000 else (high + 1, 65000)


def free_ports(host: str, count: int, contiguous: int = 0) -> tuple[list[int], int]:
    """`count` free ports, and a base such that base+1..base+contiguous are free too (for api-N ports)."""
    rng = random.Random()
    first, last = _listening_range()
    for _ in range(1000):
        base = rng.randrange(first, last - contiguous)
        wanted = [base + i for i in range(1, contiguous + 1)] + [rng.randrange(first, last) for _ in range(count)]
        if len(set(wanted)) == len(wanted) and all(port_is_free(host, p) for p in wanted):
            return wanted[contiguous:], base
    raise ClusterError("no free ports found")


def free_blocks(host: str, sizes: list[int]) -> list[int]:
    """Bases of non-overlapping blocks of free ports (base .. base+size-1 each), outside the ephemeral range."""
    rng = random.Random()
    first, last = _listening_range()
    for _ in range(1000):
        bases = [rng.randrange(first, last - size) for size in sizes]
        wanted = [b + i for b, size in zip(bases, sizes, strict=True) for i in range(size)]
        if len(set(wanted)) == len(wanted) and all(port_is_free(host, p) for p in wanted):
            return bases
    raise ClusterError("no free ports found")


def isolated_settings(cluster_dir: Path, **overrides: object) -> Settings:
    """Settings for a cluster of its own: its own directory and free ports, so it never meets `make up`'s."""
    wanted = Settings.model_validate({"cluster_dir": cluster_dir, **overrides})  # validates the overrides first
    # api-N listens on base+N, so that block starts one below its first port.
    api, nginx_port, auth_port, redis_port, sentinel_port, lab_port = free_blocks(
        wanted.host, [wanted.replicas + 1, 1, 1, len(wanted.redis_ports), max(1, len(wanted.sentinel_ports)), 1]
    )
    ports = {
        "lab_port": lab_port,
        "nginx_port": nginx_port,
        "auth_port": auth_port,
        "redis_port": redis_port,
        "sentinel_port": sentinel_port,
        "api_port_base": api,
    }
    return Settings.model_validate({"cluster_dir": cluster_dir, **ports, **overrides})


def settings_env(settings: Settings) -> dict[str, str]:
    """Settings as the environment variables every service reads them back from."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        env[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


class Cluster:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = settings.cluster_dir
        self.state_file = self.dir / "state.json"
        self.prefix = self.dir / "nginx"
        self.logs = self.dir / "logs"
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._services: dict[str, Service] = {}
        self._panel: Service | None = None

    # --- state ------------------------------------------------------------------------------------

    @classmethod
    def load(cls, cluster_dir: Path) -> Cluster:
        state_file = cluster_dir / "state.json"
        if not state_file.exists():
            raise ClusterError(f"no cluster recorded in {cluster_dir}: run `make up` first.")
        raw = json.loads(state_file.read_text())
        cluster = cls(Settings(**raw["settings"]))
        cluster._services = {k: Service(**v) for k, v in raw["services"].items()}
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
    def services(self) -> dict[str, Service]:
        return self._services

    # --- plan -------------------------------------------------------------------------------------

    def _plan(self) -> dict[str, Service]:
        s = self.settings
        py = sys.executable
        env = settings_env(s)
        host = s.host

        def log(name: str) -> str:
            return str(self.logs / f"{name}.log")

        services = (
            self._plan_store(log)
            if s.sentinel
            else {
                "redis": Service(
                    "redis",
                    [
                        require_program("redis-server"),
                        *redis_args(s.redis_port),
                        "--bind",
                        host,
                        "--dir",
                        str(self.dir / "redis"),
                        # The password lives in an owner-only ACL file, never on a command line `ps` shows.
                        "--aclfile",
                        str(s.secrets_path / "redis.acl"),
                    ],
                    {},
                    host,
                    s.redis_port,
                    "redis",
                    log("redis"),
                ),
            }
        )
        services["auth"] = Service(
            "auth", [py, "-m", "services.serve", "auth"], env, host, s.auth_port, "http", log("auth")
        )
        for name in s.replica_names:
            services[name] = Service(
                name,
                [py, "-m", "services.serve", "api"],
                {**env, "REPLICA_ID": name},
                host,
                s.api_port(name),
                "http",
                log(name),
            )
        services["nginx"] = Service(
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

    def _plan_store(self, log: Callable[[str], str]) -> dict[str, Service]:
        """Sentinel topology: redis-1 (the first primary), redis-2 and redis-3 replicating it, and three
        Sentinels watching them (quorum 2). Their configs hold the password, so they live among the secrets."""
        s = self.settings
        services: dict[str, Service] = {}
        for n, port in enumerate(s.redis_ports, start=1):
            name = f"redis-{n}"
            conf = s.secrets_path / f"{name}.conf"
            argv = [require_program("redis-server"), str(conf)]
            services[name] = Service(name, argv, {}, s.host, port, "redis", log(name))
        for n, port in enumerate(s.sentinel_ports, start=1):
            name = f"sentinel-{n}"
            conf = s.secrets_path / f"{name}.conf"
            services[name] = Service(
                name, [require_program("redis-sentinel"), str(conf)], {}, s.host, port, "sentinel", log(name)
            )
        return services

    def _redis_names(self) -> list[str]:
        return [n for n, svc in self._services.items() if svc.health == "redis"]

    def _write_store_configs(self, replica_of: dict[str, tuple[str, int]], only: list[str] | None = None) -> None:
        """redis-N.conf and sentinel-N.conf (owner-only); `replica_of` says whom each Redis follows at start.

        `only` limits the Redis configs written: a running Redis's config is left as the Sentinels rewrote it."""
        s = self.settings
        password = s.redis_password() or ""
        for name in only if only is not None else self._redis_names():
            svc = self._services[name]
            (self.dir / name).mkdir(parents=True, exist_ok=True)
            lines = [
                f"port {svc.port}",
                f"bind {s.host}",
                "protected-mode yes",
                'save ""',
                "appendonly no",
                f"dir {self.dir / name}",
                f"aclfile {s.secrets_path / 'redis.acl'}",
                f"masteruser {s.redis_username}",
                f"masterauth {password}",
                "repl-diskless-sync-delay 0",  # no data to wait for: replicas sync at once
            ]
            if name in replica_of:
                lines.append("replicaof {} {}".format(*replica_of[name]))
            write_secret(s.secrets_path / f"{name}.conf", "\n".join(lines) + "\n", replace=True)
        for n, port in enumerate(s.sentinel_ports, start=1):
            name = f"sentinel-{n}"
            conf = s.secrets_path / f"{name}.conf"
            if self._services[name].pid and pid_alive(self._services[name].pid or 0):
                continue  # a running Sentinel owns (and rewrites) its config
            (self.dir / name).mkdir(parents=True, exist_ok=True)
            primary = (s.host, s.redis_port)
            lines = [
                f"port {port}",
                f"bind {s.host}",
                "protected-mode yes",
                f"dir {self.dir / name}",
                f"requirepass {password}",
                f"sentinel sentinel-pass {password}",
                "sentinel resolve-hostnames no",
                f"sentinel monitor {s.sentinel_master} {primary[0]} {primary[1]} 2",
                f"sentinel auth-user {s.sentinel_master} {s.redis_username}",
                f"sentinel auth-pass {s.sentinel_master} {password}",
                f"sentinel down-after-milliseconds {s.sentinel_master} {s.sentinel_down_after_ms}",
                f"sentinel failover-timeout {s.sentinel_master} {s.sentinel_failover_timeout_ms}",
                f"sentinel parallel-syncs {s.sentinel_master} 1",
                # Named at once: a Sentinel otherwise learns of a replica from the primary's INFO, polled every
                # 10 s, and a failover before that leaves the replica it missed following a dead primary.
                *(
                    f"sentinel known-replica {s.sentinel_master} {self._services[r].host} {self._services[r].port}"
                    for r, leader in replica_of.items()
                    if leader == primary
                ),
            ]
            write_secret(conf, "\n".join(lines) + "\n", replace=True)

    def primary(self) -> str | None:
        """The name of the Redis that is primary now (sentinel topology: as the Sentinels say)."""
        s = self.settings
        if not s.sentinel:
            return "redis"
        for host, port in s.sentinel_hosts:
            reply = redis_command(
                host, port, "default", s.redis_password(), "SENTINEL", "get-master-addr-by-name", s.sentinel_master
            )
            if isinstance(reply, list) and len(reply) == 2:
                address = f"{reply[0]}:{reply[1]}"
                return next((n for n in self._redis_names() if self._services[n].address == address), None)
        return None

    def wait_topology(self, timeout: float = 30.0) -> None:
        """Until the primary has both replicas in sync and every Sentinel knows the other two."""
        s = self.settings
        password = s.redis_password()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            primary = self.primary()
            if primary is not None:
                svc = self._services[primary]
                info = redis_command(svc.host, svc.port, s.redis_username, password, "INFO", "replication")
                synced = isinstance(info, str) and info.count("state=online") == len(self._redis_names()) - 1
                others = [
                    redis_command(h, p, "default", password, "SENTINEL", "sentinels", s.sentinel_master)
                    for h, p in s.sentinel_hosts
                ]
                replicas = [
                    redis_command(h, p, "default", password, "SENTINEL", "replicas", s.sentinel_master)
                    for h, p in s.sentinel_hosts
                ]
                if (
                    synced
                    and all(isinstance(o, list) and len(o) == len(others) - 1 for o in others)
                    and all(healthy_replicas(r) == len(self._redis_names()) - 1 for r in replicas)
                ):
                    return
            time.sleep(0.1)
        raise ClusterError(f"the Sentinel topology did not settle within {timeout:.0f} s")

    # --- lifecycle --------------------------------------------------------------------------------

    def up(self, progress: Callable[[str], None] = lambda _: None) -> None:
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
        for d in (self.dir, self.logs, self.prefix, self.dir / "redis"):
            d.mkdir(parents=True, exist_ok=True)
        if self.settings.auth_mode is AuthMode.cookie:
            progress(COOKIE_WARNING)
        self._write_secrets()
        self._services = self._plan()
        if self.settings.sentinel:
            first = (self.settings.host, self.settings.redis_port)
            self._write_store_configs({n: first for n in self._redis_names()[1:]})
        if self._panel is not None:
            self._services[PANEL] = self._panel
        taken = [s for s in self._services.values() if not port_is_free(s.host, s.port)]
        if taken:
            names = ", ".join(f"{s.name} ({s.address})" for s in taken)
            raise ClusterError(f"port already in use for {names}: stop whatever holds it, or pick other ports.")
        self._write_nginx_conf(self.settings.lb_mode)
        self._save()
        try:
            # Replicas start beside the auth service: in jwt mode they wait for its JWKS themselves.
            store = [n for n, svc in self._services.items() if svc.health in ("redis", "sentinel")]
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
        panel = Service(PANEL, argv, env, "127.0.0.1", s.lab_port, "http", str(self.logs / "lab.log"))
        if not port_is_free(panel.host, panel.port):
            raise ClusterError(f"port {panel.address} for the panel is taken by another process")
        self._services[PANEL] = panel
        self._spawn(panel)
        self._save()
        self._wait_healthy(panel)

    def _resolve(self, name: str, starting: bool = False) -> str:
        """`redis` in the sentinel topology: the primary now (to stop), or a stopped Redis (to start)."""
        if name != "redis" or not self.settings.sentinel:
            return name
        if starting:
            stopped = [
                n for n in self._redis_names() if not (self._services[n].pid and pid_alive(self._services[n].pid or 0))
            ]
            if not stopped:
                raise ClusterError("every Redis is running")
            return stopped[0]
        primary = self.primary()
        if primary is None:
            raise ClusterError("no Redis is primary right now (a failover may be under way)")
        return primary

    def stop(self, name: str, kill: bool = False) -> None:
        name = self._resolve(name)
        service = self._get(name)
        if not self._terminate(service, sig=signal.SIGKILL if kill else signal.SIGTERM):
            raise ClusterError(f"{name} is not running")
        self._save()

    def start(self, name: str) -> None:
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

    # --- helpers ----------------------------------------------------------------------------------

    def _get(self, name: str) -> Service:
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

    def _spawn(self, service: Service) -> None:
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

    def _terminate(self, service: Service, sig: signal.Signals = signal.SIGTERM) -> bool:
        pid = service.pid
        service.pid = None
        if not pid or not pid_alive(pid):
            return False
        if Path(service.argv[0]).name not in " ".join(_cmdline(pid)):
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

    def _probe(self, service: Service) -> bool:
        if service.health == "sentinel":
            return redis_ping(service.host, service.port, "default", self.settings.redis_password())
        if service.health == "redis":
            return redis_ping(service.host, service.port, self.settings.redis_username, self.settings.redis_password())
        try:
            return httpx.get(f"http://{service.address}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _wait_healthy(self, service: Service) -> None:
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


def nginx_workers(master: int) -> list[int]:
    """The worker processes of an nginx master (those of a previous config included, until they exit)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"\nPPid:\t{master}\n" in (entry / "status").read_text():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def redis_args(port: int) -> list[str]:
    """The redis-server options shared by the local runner and compose: no persistence, own port.

    Protected mode stays on; clients authenticate as the ACL user (the default user is switched off).
    """
    return ["--port", str(port), "--save", "", "--appendonly", "no", "--protected-mode", "yes"]


def healthy_replicas(reply: object) -> int:
    """How many replicas a `SENTINEL replicas` reply lists as up and linked to their primary."""
    if not isinstance(reply, list):
        return 0
    fields = [dict(zip(r[::2], r[1::2], strict=True)) for r in reply if isinstance(r, list)]
    return sum(f.get("flags") == "slave" and f.get("master-link-status") == "ok" for f in fields)


def redis_command(host: str, port: int, username: str, password: str | None, *command: str) -> object:
    """One command to a Redis or Sentinel, authenticated, as its raw reply (bytes decoded, errors as None);
    None too when it cannot be asked."""
    import hiredis

    def plain(value: object) -> object:
        if isinstance(value, bytes):
            return value.decode(errors="replace")
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    setup = [("AUTH", username, password)] if password else []
    try:
        with socket.create_connection((host, port), timeout=1.0) as s:
            s.sendall(b"".join(hiredis.pack_command(c) for c in [*setup, command]))  # type: ignore[arg-type]  # any length
            reader = hiredis.Reader()
            replies: list[object] = []
            while len(replies) < len(setup) + 1:
                chunk = s.recv(65536)
                if not chunk:
                    return None
                reader.feed(chunk)
                while (reply := reader.gets()) is not False:
                    replies.append(reply)
    except OSError:
        return None
    if any(isinstance(r, hiredis.ReplyError) for r in replies):
        return None
    return plain(replies[-1])


def redis_ping(host: str, port: int, username: str, password: str | None) -> bool:
    """Health of the cluster's Redis, asked as its ACL user."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            auth = f"AUTH {username} {password}\r\n".encode() if password else b""
            s.sendall(auth + b"PING\r\n")
            reply = b""
            while reply.count(b"\r\n") < (2 if auth else 1):
                chunk = s.recv(64)
                if not chunk:
                    break
                reply += chunk
            return reply.rstrip().endswith(b"+PONG")
    except OSError:
        return False


def tail(path: str, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
