"""Security, second round: the store's door, throttles under concurrency, secrets at rest, token families.

Each test here failed on the code before it (see SECURITY.md's table, "round 2").
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from helpers import PASSWORD, bearer, client, decode_part, login, new_user, new_username, register

from scaleout.lab.drivers.local import Cluster
from scaleout.lab.processes import cmdline, nginx_workers

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(start_cluster: Callable[..., Cluster]) -> Cluster:
    return start_cluster(auth_mode="session", session_store="redis", client_timeout=2)


@pytest.fixture(scope="module")
def jwt_cluster(start_cluster: Callable[..., Cluster]) -> Cluster:
    return start_cluster(auth_mode="jwt", jwt_revocation="denylist", refresh_absolute_ttl=4, jwks_refresh_interval=0.5)


def raw_redis(cluster: Cluster, payload: bytes) -> bytes:
    with socket.create_connection((cluster.settings.host, cluster.settings.redis_port), timeout=2) as s:
        s.sendall(payload)
        time.sleep(0.2)  # let every reply of the pipelined commands arrive (a raw socket has no framing)
        return s.recv(4096)


def test_redis_refuses_clients_without_the_clusters_credentials(cluster: Cluster) -> None:
    anonymous = raw_redis(cluster, b"PING\r\nKEYS *\r\nSET sess:x y\r\n")
    assert anonymous.count(b"-NOAUTH") == 3 and b"+PONG" not in anonymous
    wrong = raw_redis(cluster, b"AUTH scaleout wrong-password\r\nPING\r\n")
    assert b"-WRONGPASS" in wrong and b"+PONG" not in wrong
    default_user = raw_redis(cluster, b"AUTH default \r\nPING\r\n")
    assert b"+PONG" not in default_user
    s = cluster.settings
    right = raw_redis(cluster, f"AUTH {s.redis_username} {s.redis_password()}\r\nPING\r\n".encode())
    assert right == b"+OK\r\n+PONG\r\n"
    redis_argv = cluster.services["redis"].argv
    assert redis_argv[redis_argv.index("--bind") + 1] == "127.0.0.1"
    assert redis_argv[redis_argv.index("--protected-mode") + 1] == "yes"


def test_wrong_passwords_sent_at_the_same_moment_meet_the_account_limit(cluster: Cluster) -> None:
    with client(cluster) as c:
        victim = new_username("victim")
        register(c, victim)
    limit = cluster.settings.throttle_account_max
    gate = threading.Barrier(40)
    statuses: list[int] = []

    def attempt(i: int) -> None:
        # 40 different client addresses: only the per-account limit can stop them.
        with client(cluster, local_address=f"127.0.{40 + i // 200}.{1 + i % 200}") as c:
            gate.wait()
            statuses.append(c.post("/api/login", json={"username": victim, "password": "wrong password"}).status_code)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses.count(401) <= limit, statuses
    assert set(statuses) <= {401, 429, 503}
    assert statuses.count(429) >= 40 - limit - statuses.count(503)


def test_a_right_password_does_not_count_against_the_account(cluster: Cluster) -> None:
    with client(cluster) as c:
        name = new_username("regular")
        register(c, name)
        for _ in range(cluster.settings.throttle_account_max + 3):
            login(c, name)  # every one 200: the attempt is given back when the password is right


def test_a_registration_flood_from_one_address_meets_429_within_60(cluster: Cluster) -> None:
    statuses = []
    with client(cluster, local_address="127.0.9.9") as c:
        for _ in range(60):
            r = c.post("/api/register", json={"username": new_username("flood"), "password": PASSWORD})
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
                break
    assert statuses[-1] == 429 and statuses[:-1] == [201] * (len(statuses) - 1)
    assert len(statuses) > 10  # normal use (a few sign-ups) never meets it


def test_a_refresh_flood_from_one_address_meets_429(cluster: Cluster) -> None:
    with client(cluster, local_address="127.0.9.10") as c:
        statuses = [c.post("/api/refresh", json={"refresh_token": "x"}).status_code for _ in range(300)]
    assert 429 in statuses
    assert set(statuses) <= {404, 429}  # no refresh endpoint in session mode (404), and the flood is cut off


def test_cookie_names_are_compared_after_trimming(cluster: Cluster) -> None:
    with client(cluster) as c:
        new_user(c)
        sid = c.cookies.get("sid")
    url = f"{cluster.settings.public_url}/api/me"
    with httpx.Client() as raw:
        assert raw.get(url, headers={"Cookie": f"sid={sid}"}).status_code == 200
        assert raw.get(url, headers={"Cookie": f"a=1;  sid={sid}"}).status_code == 200  # plain whitespace
        for cookie in (f"sid={sid}; sid =junk", f"sid={sid}; sid\t=junk", f'sid="{sid}"', f"sid ={sid}; sid={sid}"):
            r = raw.get(url, headers={"Cookie": cookie})
            assert r.status_code == 401, cookie
        two_headers = raw.get(url, headers=[("Cookie", f"sid={sid}"), ("Cookie", "sid=abcd." + "A" * 43)])
        assert two_headers.status_code == 401


def test_secrets_are_owner_only_and_never_copied(cluster: Cluster, start_cluster: Callable[..., Cluster]) -> None:
    hs = start_cluster(auth_mode="jwt", jwt_alg="HS256", replicas=1)
    for c in (cluster, hs):
        s = c.settings
        directory = s.secrets_path
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        files = [p for p in directory.rglob("*") if p.is_file()]
        assert {p.name for p in files} >= {"redis_password", "session_key", "redis.acl", "users.sqlite3"}
        for p in files:
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        values = [(directory / n).read_text().strip() for n in ("redis_password", "session_key")]
        if s.jwt_alg == "HS256":
            assert stat.S_IMODE((directory / "jwt_secret").stat().st_mode) == 0o600
            values.append((directory / "jwt_secret").read_text().strip())
        copies = [s.cluster_dir / "state.json", s.cluster_dir / "nginx" / "nginx.conf", *s.cluster_dir.glob("logs/*")]
        for path in copies:
            text = path.read_text(errors="replace")
            assert not any(v in text for v in values), path
        for service in c.services.values():
            assert service.pid
            assert not any(v in " ".join(cmdline(service.pid)) for v in values), service.name
            environ = Path(f"/proc/{service.pid}/environ").read_bytes().decode(errors="replace")
            assert not any(v in environ for v in values), service.name
    if os.geteuid() == 0:  # started as root: the workers must not be
        workers = nginx_workers(cluster.services["nginx"].pid or 0)
        assert workers
        for pid in workers:
            uid = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:"))
            assert uid.split()[1] != "0"


def test_a_slow_header_client_is_cut_off(cluster: Cluster) -> None:
    s = cluster.settings
    started = time.monotonic()
    closed_after = None
    with socket.create_connection((s.host, s.nginx_port), timeout=5) as sock:
        request = b"GET /api/whoami HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40
        for i, byte in enumerate(request):
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed_after = time.monotonic() - started
                break
            if i > 20:  # the request line is out: now one byte every half second, like a slowloris
                sock.settimeout(0.5)
                try:
                    if sock.recv(1024) == b"":
                        closed_after = time.monotonic() - started
                        break
                except TimeoutError:
                    pass
                except OSError:
                    closed_after = time.monotonic() - started
                    break
    assert closed_after is not None, "nginx kept a slow client forever"
    assert closed_after < s.client_timeout + 3


def test_denylist_logout_ends_every_access_token_of_the_login(jwt_cluster: Cluster) -> None:
    with client(jwt_cluster) as c:
        _, r = new_user(c)
        first = r.json()
        second = c.post("/api/refresh", json={"refresh_token": first["refresh_token"]}).json()
        for token in (first["access_token"], second["access_token"]):
            assert {c.get("/api/me", headers=bearer(token)).status_code for _ in range(3)} == {200}
        assert c.post("/api/logout", headers=bearer(second["access_token"])).status_code == 204
        for token in (first["access_token"], second["access_token"]):
            assert {c.get("/api/me", headers=bearer(token)).status_code for _ in range(6)} == {401}


def test_refresh_needs_a_live_account_and_a_family_has_an_absolute_end(jwt_cluster: Cluster) -> None:
    from scaleout.core.users import Users

    with client(jwt_cluster) as c:
        _, r = new_user(c)
        tokens = r.json()
        started = decode_part(tokens["refresh_token"], 1)["iat"]
        # No token of the family outlives its absolute end, however often it is refreshed.
        assert decode_part(tokens["refresh_token"], 1)["exp"] <= started + jwt_cluster.settings.refresh_absolute_ttl
        tokens = c.post("/api/refresh", json={"refresh_token": tokens["refresh_token"]}).json()
        deadline = time.monotonic() + 15
        while True:
            r = c.post("/api/refresh", json={"refresh_token": tokens["refresh_token"]})
            if r.status_code == 401:
                break
            assert r.status_code == 200 and time.monotonic() < deadline
            tokens = r.json()
            time.sleep(0.25)  # polling for the family's end, well under the refresh rate limit
        assert time.time() >= started + jwt_cluster.settings.refresh_absolute_ttl - 1

        disabled, r = new_user(c, "dis")
        users = Users(jwt_cluster.settings.users_db_path)
        users.set_disabled(disabled, True)
        users.close()
        assert c.post("/api/refresh", json={"refresh_token": r.json()["refresh_token"]}).status_code == 401


def test_a_family_refreshed_in_time_lives_to_its_absolute_end_and_stays_listed(
    start_cluster: Callable[..., Cluster],
) -> None:
    """A refresh token lives REFRESH_TTL, a family REFRESH_ABSOLUTE_TTL: refreshed in time, a login must last
    past its first REFRESH_TTL (the user's family index once expired then, refusing every later refresh) and
    stay listed and revocable until its absolute end."""
    short = start_cluster(auth_mode="jwt", refresh_ttl=2, refresh_absolute_ttl=6)
    with client(short) as c:
        _, r = new_user(c)
        tokens = r.json()
        logged_in = time.monotonic()
        while time.monotonic() - logged_in < 4.5:  # more than twice REFRESH_TTL since the login
            time.sleep(0.7)
            r = c.post("/api/refresh", json={"refresh_token": tokens["refresh_token"]})
            assert r.status_code == 200, (round(time.monotonic() - logged_in, 1), r.text)
            tokens = r.json()
        listed = c.get("/api/sessions", headers=bearer(tokens["access_token"])).json()["sessions"]
        assert len(listed) == 1 and listed[0]["current"]
        while True:  # refreshed in time until the family's absolute end, and refused from then on
            r = c.post("/api/refresh", json={"refresh_token": tokens["refresh_token"]})
            if r.status_code == 401:
                break
            assert r.status_code == 200 and time.monotonic() - logged_in < 10, "outlived its absolute end"
            tokens = r.json()
            time.sleep(0.5)
        assert time.monotonic() - logged_in >= 6 - 1.5


def test_a_revoked_key_stops_verifying_on_every_replica_without_restarts(jwt_cluster: Cluster) -> None:
    pids = {n: s.pid for n, s in jwt_cluster.services.items()}
    with client(jwt_cluster) as c:
        _, r = new_user(c)
        token = r.json()["access_token"]
        kid = decode_part(token, 0)["kid"]
        assert {c.get("/api/me", headers=bearer(token)).status_code for _ in range(3)} == {200}
        jwt_cluster.revoke_key(kid)
        deadline = time.monotonic() + 5
        while {c.get("/api/me", headers=bearer(token)).status_code for _ in range(6)} != {401}:
            assert time.monotonic() < deadline, "a replica still trusts the revoked key"
        assert kid not in {k["kid"] for k in c.get("/auth/.well-known/jwks.json").json()["keys"]}
        _, r = new_user(c)  # logins go on, signed with a new key
        assert decode_part(r.json()["access_token"], 0)["kid"] != kid
        assert {c.get("/api/me", headers=bearer(r.json()["access_token"])).status_code for _ in range(3)} == {200}
    assert {n: s.pid for n, s in jwt_cluster.services.items()} == pids


def test_password_hashing_is_capped_and_excess_waits_or_gets_503() -> None:
    from services.auth.main import Busy, HashPool

    async def scenario() -> list[str]:
        pool = HashPool(concurrency=1, wait=0.2)
        outcomes = []

        async def one() -> None:
            try:
                await pool.run(time.sleep, 0.5)
                outcomes.append("ran")
            except Busy:
                outcomes.append("busy")

        await asyncio.gather(one(), one(), one())
        return outcomes

    assert sorted(asyncio.run(scenario())) == ["busy", "busy", "ran"]
