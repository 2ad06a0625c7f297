"""Start a peer app under the same uvicorn settings as our services, and log its users in."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from scaleout.lab.ports import free_ports, port_is_free

HOST = "127.0.0.1"


@contextmanager
def peer(module: str, env: dict[str, str], workdir: Path) -> Iterator[str]:
    """`uvicorn <module>:app` on a free port, as `services.serve` runs ours; yields its base URL."""
    import os

    (port,), _ = free_ports(HOST, 1)
    argv = [sys.executable, "-m", "uvicorn", f"{module}:app", "--host", HOST, "--port", str(port)]
    argv += ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
    log = open(workdir / f"{module.rsplit('.', 1)[-1]}.log", "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(argv, cwd=workdir, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while port_is_free(HOST, port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"peer {module} did not start; see {log.name}")
            time.sleep(0.05)
        yield f"http://{HOST}:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def fastapi_users_tokens(url: str, users: int) -> tuple[str, ...]:
    """Register and log in `users` accounts the way fastapi-users' docs do; their bearer headers."""
    headers = []
    with httpx.Client(base_url=url, timeout=30) as c:
        for i in range(users):
            email, password = f"bench{i}-{time.time_ns()}@example.com", "bench password 1"
            r = c.post("/auth/register", json={"email": email, "password": password})
            assert r.status_code == 201, r.text
            r = c.post("/auth/login", data={"username": email, "password": password})
            assert r.status_code == 200, r.text
            headers.append(f"Bearer {r.json()['access_token']}")
    return tuple(headers)


def peer_logins(url: str, users: int) -> tuple[str, tuple[str, ...]]:
    """Log `users` in to a peer with a `POST /login` (the cookie-session and authx peers): the header its
    authenticated route reads, and each user's value for it (a session cookie, or a bearer token)."""
    values = []
    header = "Cookie"
    with httpx.Client(base_url=url, timeout=30) as c:
        for i in range(users):
            r = c.post("/login", json={"username": f"bench{i}", "password": "bench password 1"})
            assert r.status_code == 200, r.text
            if "access_token" in r.json():
                header = "Authorization"
                values.append(f"Bearer {r.json()['access_token']}")
            else:
                values.append("; ".join(f"{k}={v}" for k, v in r.cookies.items()))
            c.cookies.clear()
    return header, tuple(values)
