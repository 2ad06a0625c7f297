"""Helpers shared by the integration tests: free ports, settings for a test cluster, HTTP clients, users."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

from scaleout.core.config import Settings
from scaleout.lab.drivers.local import Cluster
from scaleout.lab.load import RequestLoop
from scaleout.lab.ports import free_ports as runner_free_ports
from scaleout.lab.ports import isolated_settings
from scaleout.lab.topology import Shard

HOST = "127.0.0.1"
PASSWORD = "correct horse battery"


def free_ports(count: int, contiguous: int = 0) -> tuple[list[int], int]:
    return runner_free_ports(HOST, count, contiguous)


def cluster_settings(tmp: Path, **overrides: object) -> Settings:
    # Throttling per address has its own tests; the others log in many users from one address.
    return isolated_settings(tmp, **{"throttle_ip_max": 10_000, **overrides})


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {port}")


def client(cluster: Cluster, local_address: str | None = None) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=local_address) if local_address else None
    return httpx.Client(base_url=cluster.settings.public_url, timeout=10.0, transport=transport)


def new_username(prefix: str = "u") -> str:
    return f"{prefix}{secrets.token_hex(6)}"


def register(c: httpx.Client, username: str, password: str = PASSWORD) -> None:
    r = c.post("/api/register", json={"username": username, "password": password})
    assert r.status_code == 201, r.text


def login(c: httpx.Client, username: str, password: str = PASSWORD) -> httpx.Response:
    r = c.post("/api/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return r


def new_user(c: httpx.Client, prefix: str = "u") -> tuple[str, httpx.Response]:
    """Register and log in a fresh user on client `c` (its cookie jar keeps the session)."""
    name = new_username(prefix)
    register(c, name)
    return name, login(c, name)


def new_session(c: httpx.Client, prefix: str = "s") -> dict:
    """A fresh user logged in on `c`: the login's JSON (its cookie jar keeps the session)."""
    return new_user(c, prefix)[1].json()


def stack_client(url: str, local_address: str | None = None) -> httpx.Client:
    """A client of a container stack's published nginx port; `local_address` shows it as another client."""
    transport = httpx.HTTPTransport(local_address=local_address) if local_address else None
    return httpx.Client(base_url=url, timeout=10.0, transport=transport)


def replicas_of(c: httpx.Client, n: int, path: str = "/api/whoami", **kw: object) -> list[tuple[str, int]]:
    """(replica, status) of `n` GETs of `path`."""
    out = []
    for _ in range(n):
        r = c.get(path, **kw)  # type: ignore[arg-type]
        out.append((r.headers.get("x-replica", "-"), r.status_code))
    return out


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def spread(responses: list[httpx.Response]) -> Counter[tuple[str, int]]:
    """(replica, status) counts: the tests' view of which replica answered what."""
    return Counter((r.headers.get("x-replica", "-"), r.status_code) for r in responses)


def b64(data: bytes | dict) -> str:
    import base64
    import json

    raw = json.dumps(data, separators=(",", ":")).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge(header: dict, payload: dict, sign_with=None) -> str:
    """A compact JWS built by hand; signed with `sign_with` (a BoundKey) when given, else unsigned."""
    signing_input = f"{b64(header)}.{b64(payload)}"
    from scaleout.core.tokens import low_s

    signature = low_s(sign_with.alg, sign_with.key.sign(signing_input.encode())) if sign_with is not None else b""
    return f"{signing_input}.{b64(signature)}"


def decode_part(token: str, index: int) -> dict:
    import base64

    import orjson

    part = token.split(".")[index]
    return orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def signing_key(cluster: Cluster):
    """The auth service's current signing key, read from the cluster's key ring on disk."""
    from scaleout.core.keys import KeyRing, hs256_key

    s = cluster.settings
    if s.jwt_alg == "HS256":
        return hs256_key(s.hs256_secret())
    return KeyRing(s.keys_path, s.jwt_alg, grace=s.refresh_ttl).signer


def valid_claims(cluster: Cluster, sub: str, **changes: object) -> dict:
    now = int(time.time())
    s = cluster.settings
    claims = {
        "iss": s.jwt_issuer,
        "aud": s.jwt_audience,
        "sub": sub,
        "name": sub,
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_urlsafe(16),
        "fam": secrets.token_urlsafe(16),
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not ...}


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m scaleout …` as CI runs it: no terminal, CI=true, nothing on stdin; `env` added."""
    from scaleout.core.config import ROOT

    return subprocess.run(
        [sys.executable, "-m", "scaleout", *args],
        cwd=ROOT,
        env={**os.environ, "CI": "true", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def cluster_redis(cluster: Cluster):
    """A synchronous client of a test cluster's Redis, as the operator (the administrative ACL user)."""
    import redis

    s = cluster.settings
    return redis.Redis(
        host=s.host, port=s.redis_port, username=s.redis_admin_username, password=s.redis_admin_password()
    )


RUN_MARKER = "SCALEOUT_TEST_RUN"  # set once per test run; every process the run starts inherits it


def leftover_processes(run_id: str) -> dict[int, str]:
    """Processes of this test run still alive (replicas, auth, Redis, Sentinels, nginx, the panel, wrk):
    those whose environment carries this run's marker. Another run's, or a `make up` cluster's, never match."""
    marker = f"{RUN_MARKER}={run_id}".encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        found[int(entry.name)] = cmdline.strip()
    return found


def shard_of(shards: list[Shard], sid: str) -> Shard:
    """The Redis Cluster shard that holds the session with this ID (from its slot tag)."""
    from redis.crc import key_slot

    from scaleout.core.keyspace import session_key

    slot = key_slot(session_key(sid.encode()).encode())
    return next(s for s in shards if any(a <= slot <= b for a, b in s.slots))


def shard_loss(loop: RequestLoop[tuple[int, int]], killed_at: float, shard: int) -> tuple[Counter[int], list[float]]:
    """After a shard's primary was killed under a loop of (shard, status): the statuses the other shards'
    users got, and when its own users' requests failed."""
    after = [o for o in loop.outcomes if o.started >= killed_at]
    others = Counter(status for number, status in (o.value for o in after) if number != shard)
    hit = [o for o in after if o.value[0] == shard]
    assert {status for _, status in (o.value for o in hit)} <= {200, 503}, Counter(o.value[1] for o in hit)
    return others, [o.started for o in hit if o.value[1] != 200]


def per_shard(
    people: list[httpx.Client], loopers: list[httpx.Client], shard: dict[int, int]
) -> Callable[[int, int], tuple[int, int]]:
    """A RequestLoop step: worker `w`'s client GETs /api/me with each person's session in turn; (the number of
    the shard that holds the session, the status)."""

    def me(worker: int, n: int) -> tuple[int, int]:
        c = people[n % len(people)]
        try:
            status = loopers[worker].get("/api/me", headers={"Cookie": f"sid={c.cookies['sid']}"}).status_code
        except httpx.HTTPError:
            status = 599
        return shard[id(c)], status

    return me


def logs_in_after_failover(c: httpx.Client, name: str, timeout: float = 15.0) -> list[int]:
    """Log `name` in on `c` until it works: right after a failover a login may get 503 for a while (no
    replica can confirm it yet: `WAIT`), never another status. The statuses seen."""
    from scaleout.lab.load import wait_until

    logins: list[int] = []

    def logs_in() -> bool:
        logins.append(c.post("/api/login", json={"username": name, "password": PASSWORD}).status_code)
        return logins[-1] == 200

    assert wait_until(logs_in, timeout, interval=0.2), logins
    assert set(logins) <= {200, 503}, logins
    return logins
