"""Renders `nginx/nginx.conf.j2` for the local cluster, compose, Kubernetes or a Swarm, from the same settings."""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path
from typing import Literal

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from scaleout.core.config import ROOT, LBMode, Settings

TEMPLATE_DIR = ROOT / "nginx"
PROBE_PORT = 8081  # containers only: nginx's view of each replica, inside the stack's network
Target = Literal["local", "compose", "k8s", "swarm"]
Replicas = list[tuple[str, str]]  # (api-N, host:port)


def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATE_DIR),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # nginx config, not HTML
    )


def render(
    settings: Settings,
    target: Target,
    lb_mode: LBMode | None = None,
    prefix: Path | None = None,
    found: tuple[Replicas, str] | None = None,
) -> str:
    """`found`: a Swarm's replicas and auth address as discovered now (`scaleout.lab.swarmnginx`); the other
    targets know theirs from the settings."""
    mode = lb_mode or settings.lb_mode
    if target == "local":
        host = settings.host
        replicas = [(n, f"{host}:{settings.api_port(n)}") for n in settings.replica_names]
        auth_address = f"{host}:{settings.auth_port}"
        listen = f"{host}:{settings.nginx_port}"
        assert prefix is not None
        paths = {
            "pid_file": str(prefix / "nginx.pid"),
            "error_log": str(prefix / "error.log"),
            "access_log": f"{prefix / 'access.log'} combined buffer=64k flush=1s",
        }
        worker_user = "nobody nogroup" if os.geteuid() == 0 else ""
        probe_listen = ""  # local replicas are probed directly on their own ports
    else:
        if target == "swarm":
            assert found is not None
            replicas, auth_address = found
        elif target == "k8s":
            # A StatefulSet's pods behind its headless Service: api-0.api ... api-N-1.api, one port for all.
            names = [f"api-{i}" for i in range(settings.replicas)]
            replicas = [(n, f"{n}.api:{settings.api_port(n)}") for n in names]
        else:
            # Containers reach each other by service name; every service keeps its local port.
            replicas = [(n, f"{n}:{settings.api_port(n)}") for n in settings.replica_names]
        if target != "swarm":
            auth_address = f"auth:{settings.auth_port}"
        listen = str(settings.nginx_port)
        paths = {"pid_file": "/tmp/nginx.pid", "error_log": "/dev/stderr", "access_log": "/dev/stdout combined"}
        worker_user = ""  # the image's own nginx.conf user is not read; the container runs nginx as is
        probe_listen = str(PROBE_PORT) if target in ("compose", "swarm") else ""
    return (
        _environment()
        .get_template("nginx.conf.j2")
        .render(
            target=target,
            lb_mode=str(mode),
            replicas=replicas,
            auth_address=auth_address,
            listen=listen,
            workers=2,
            login_rate=settings.login_rate,
            login_burst=settings.login_burst,
            register_rate=settings.register_rate_per_minute,
            register_burst=settings.register_burst,
            refresh_rate=settings.refresh_rate,
            refresh_burst=settings.refresh_burst,
            conn_per_ip=settings.conn_per_ip,
            replica_max_inflight=settings.replica_max_inflight,
            client_timeout=settings.client_timeout,
            read_timeout=math.ceil(settings.auth_timeout) + 2,
            worker_user=worker_user,
            probe_listen=probe_listen,
            **paths,
        )
    )


def check(nginx: str, prefix: Path, conf: Path) -> None:
    """`nginx -t` on a config file; raises with nginx's own message when it is wrong."""
    result = subprocess.run(
        [nginx, "-t", "-q", "-p", str(prefix), "-c", str(conf)], capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0:
        raise RuntimeError(f"nginx -t failed for {conf}:\n{result.stderr.strip()}")
