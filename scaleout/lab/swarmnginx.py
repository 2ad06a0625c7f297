"""nginx in a Docker Swarm, following the API replicas: the `nginx` service's main process.

A Swarm without IPVS has no virtual IPs: every service is `endpoint_mode: dnsrr`, and `tasks.api` resolves
to the address of each running replica task. This process renders `nginx/nginx.conf.j2` (the one template)
with the replicas it finds there, each named by its own `/healthz` (`api-<task slot>`, so the sticky cookie
names a replica that stays valid while its slot lives), starts nginx, and re-renders and reloads it
gracefully (config test first) whenever the set changes: a scale, a rescheduled task, a lost node. A task
enters the config only once it answers; one that left DNS leaves it.

    python -m scaleout.lab.swarmnginx             supervise nginx (the container's command)
    python -m scaleout.lab.swarmnginx --lb MODE   switch the balancer live (`docker exec`); prints the view
    python -m scaleout.lab.swarmnginx --view      what nginx runs with now, as JSON
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from scaleout.core.config import LBMode, Settings
from scaleout.lab.nginx import PROBE_PORT, Replicas, render

CONF = Path("/tmp/nginx/nginx.conf")
VIEW = Path("/tmp/nginx/view.json")  # what nginx was last reloaded with
LB = Path("/tmp/nginx/lb_mode")  # `--lb` writes it; the loop applies it
EVERY = 0.25  # seconds between looks at the Swarm's DNS
NOWHERE = "127.0.0.1:1"  # an upstream that refuses: no replica (or no auth) found yet means 503, not a crash


@dataclass(frozen=True, slots=True)
class View:
    lb_mode: str
    replicas: tuple[tuple[str, str], ...]  # (api-N, ip:port), by name
    auth: str
    reached: tuple[str, ...] = ()  # the replicas nginx itself answered for on its probe server after reloading


def resolve(name: str) -> list[str]:
    try:
        return sorted({str(a[4][0]) for a in socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)})
    except OSError:  # no task at all (scaled to 0, not yet started): the name does not resolve
        return []


def replica_name(address: str) -> str | None:
    """The replica's own name (`api-N`), from its liveness endpoint; None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://{address}/healthz", timeout=1.0) as r:
            name = json.load(r).get("service")
    except (OSError, ValueError):
        return None
    return name if isinstance(name, str) and name.startswith("api-") else None


class Follower:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.port = settings.api_port("api-1")  # every replica listens on REPLICA_PORT
        self.names: dict[str, str] = {}  # address -> api-N, while the address stays in DNS

    def replicas(self) -> Replicas:
        addresses = [f"{ip}:{self.port}" for ip in resolve("tasks.api")]
        self.names = {a: n for a, n in self.names.items() if a in addresses}
        for a in addresses:
            if a not in self.names and (name := replica_name(a)) is not None:
                self.names[a] = name
        by_name: dict[str, str] = {}
        for address, name in sorted(self.names.items()):
            by_name.setdefault(name, address)  # a slot's old task still draining and its new one: keep one
        return sorted(by_name.items(), key=lambda item: int(item[0].removeprefix("api-"))) or [("api-0", NOWHERE)]

    def look(self, lb_mode: str) -> View:
        auth = resolve("tasks.auth")
        auth_address = f"{auth[0]}:{self.settings.auth_port}" if auth else NOWHERE
        return View(lb_mode, tuple(self.replicas()), auth_address)


def lb_mode(settings: Settings) -> str:
    try:
        return str(LBMode(LB.read_text().strip()))
    except (OSError, ValueError):
        return str(settings.lb_mode)


def write_config(settings: Settings, view: View) -> None:
    CONF.parent.mkdir(parents=True, exist_ok=True)
    text = render(settings, "swarm", LBMode(view.lb_mode), found=(list(view.replicas), view.auth))
    tmp = CONF.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(CONF)


def probed(names: list[str], timeout: float = 5.0) -> tuple[str, ...]:
    """The replicas nginx reaches on its probe server, once the reload is in effect (or the time is up)."""
    deadline = time.monotonic() + timeout
    reached: set[str] = set()
    while True:
        for name in names:
            if name not in reached:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{PROBE_PORT}/upstream/{name}", timeout=1.0).close()
                    reached.add(name)
                except OSError:
                    pass
        if reached >= set(names) or time.monotonic() > deadline:
            return tuple(sorted(reached))
        time.sleep(0.05)


def supervise() -> int:
    settings = Settings()
    follower = Follower(settings)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    argv = ["nginx", "-c", str(CONF), "-g", "daemon off;"]
    view = follower.look(lb_mode(settings))
    write_config(settings, view)
    nginx = subprocess.Popen(argv)
    shown: View | None = None
    while not stopping.is_set():
        if nginx.poll() is not None:
            return nginx.returncode or 1
        if shown is None or shown.replicas != view.replicas or shown.lb_mode != view.lb_mode or shown.auth != view.auth:
            if shown is not None:
                write_config(settings, view)
                test = subprocess.run([*argv[:3], "-t", "-q"], capture_output=True, text=True)
                if test.returncode != 0:
                    print(f"swarm-nginx: config refused, kept the old one: {test.stderr.strip()}", flush=True)
                    stopping.wait(EVERY)
                    view = follower.look(lb_mode(settings))
                    continue
                nginx.send_signal(signal.SIGHUP)
            names = [n for n, a in view.replicas if a != NOWHERE]
            shown = View(view.lb_mode, view.replicas, view.auth, probed(names))
            tmp = VIEW.with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(shown)))
            tmp.replace(VIEW)
            print(f"swarm-nginx: {view.lb_mode}, replicas {dict(view.replicas)}, auth {view.auth}", flush=True)
        stopping.wait(EVERY)
        view = follower.look(lb_mode(settings))
    nginx.send_signal(signal.SIGQUIT)  # graceful: requests in flight finish
    try:
        nginx.wait(timeout=20)
    except subprocess.TimeoutExpired:
        nginx.kill()
    return 0


def switch(mode: str, timeout: float = 15.0) -> int:
    """Ask the running supervisor for another balancer mode; returns once nginx runs with it."""
    try:
        wanted = str(LBMode(mode))
    except ValueError:
        print(f"unknown balancer mode {mode!r}: {', '.join(LBMode)}", file=sys.stderr)
        return 2
    tmp = LB.with_suffix(".tmp")
    tmp.write_text(wanted)
    tmp.replace(LB)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = json.loads(VIEW.read_text())
        except (OSError, ValueError):
            found = {}
        if found.get("lb_mode") == wanted:
            print(json.dumps(found))
            return 0
        time.sleep(0.05)
    print(f"nginx did not switch to {wanted} within {timeout:.0f} s", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    if not argv:
        return supervise()
    if argv == ["--view"]:
        try:
            print(VIEW.read_text())
        except OSError:
            print("{}")
        return 0
    if len(argv) == 2 and argv[0] == "--lb":
        return switch(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
