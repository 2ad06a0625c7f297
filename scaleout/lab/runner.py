"""The local cluster: redis-server, the auth service, N API replicas and nginx as plain processes.

Everything it starts is recorded (pid, address, command) in `<cluster_dir>/state.json`, so `down`, `stop`,
`start`, `lb` and `status` work from a later command, and `down` stops only what `up` started.
"""

from __future__ import annotations

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

from scaleout.core.config import ROOT, JWTAlg, LBMode, Settings
from scaleout.core.keys import KeyUnusable
from scaleout.core.secretfiles import write_cluster_secrets
from scaleout.lab import nginx

HEALTH_TIMEOUT = 30.0


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


def isolated_settings(cluster_dir: Path, **overrides: object) -> Settings:
    """Settings for a cluster of its own: its own directory and free ports, so it never meets `make up`'s."""
    wanted = Settings.model_validate({"cluster_dir": cluster_dir, **overrides})  # validates the overrides first
    (nginx_port, auth_port, redis_port), base = free_ports(wanted.host, 3, contiguous=wanted.replicas)
    ports = {"nginx_port": nginx_port, "auth_port": auth_port, "redis_port": redis_port, "api_port_base": base}
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

        services = {
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
            "auth": Service("auth", [py, "-m", "services.serve", "auth"], env, host, s.auth_port, "http", log("auth")),
        }
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

    # --- lifecycle --------------------------------------------------------------------------------

    def up(self, progress: Callable[[str], None] = lambda _: None) -> None:
        if self.state_file.exists():
            try:
                previous = Cluster.load(self.dir)
            except (ClusterError, ValueError, TypeError, KeyError):
                previous = None
            if previous and any(svc.pid and pid_alive(svc.pid) for svc in previous.services.values()):
                raise ClusterError(f"a cluster is already running from {self.dir}: run `make down` first.")
        for d in (self.dir, self.logs, self.prefix, self.dir / "redis"):
            d.mkdir(parents=True, exist_ok=True)
        self._write_secrets()
        self._services = self._plan()
        taken = [s for s in self._services.values() if not port_is_free(s.host, s.port)]
        if taken:
            names = ", ".join(f"{s.name} ({s.address})" for s in taken)
            raise ClusterError(f"port already in use for {names}: stop whatever holds it, or pick other ports.")
        self._write_nginx_conf(self.settings.lb_mode)
        self._save()
        try:
            # Replicas start beside the auth service: in jwt mode they wait for its JWKS themselves.
            for group in (["redis"], ["auth", *self.settings.replica_names], ["nginx"]):
                for name in group:
                    self._spawn(self._services[name])
                self._save()
                for name in group:
                    self._wait_healthy(self._services[name])
                    progress(f"{name} healthy on {self._services[name].address}")
        except BaseException:
            self.down()
            raise

    def down(self) -> list[str]:
        stopped = []
        for name in reversed(list(self._services)):
            if self._terminate(self._services[name]):
                stopped.append(name)
        self._save()
        return stopped

    def stop(self, name: str, kill: bool = False) -> None:
        service = self._get(name)
        if not self._terminate(service, sig=signal.SIGKILL if kill else signal.SIGTERM):
            raise ClusterError(f"{name} is not running")
        self._save()

    def start(self, name: str) -> None:
        service = self._get(name)
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
