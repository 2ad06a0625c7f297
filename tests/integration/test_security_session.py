"""Security of session mode and of login, through nginx against a running cluster (SECURITY.md lists them)."""

from __future__ import annotations

import socket
import statistics
import threading
import time

import httpx
import pytest
from helpers import PASSWORD, client, cluster_redis, login, new_user, new_username, register

from scaleout.core.sessions import new_session_id
from scaleout.core.users import Users
from scaleout.lab.drivers.local import Cluster
from scaleout.lab.load import RequestLoop, wait_until

pytestmark = pytest.mark.cluster
GENERIC_401 = {"detail": "not authenticated"}


@pytest.fixture(scope="module")
def cluster(start_cluster) -> Cluster:
    return start_cluster(
        auth_mode="session",
        session_store="redis",
        session_idle_ttl=2,
        session_absolute_ttl=4,
        throttle_account_max=3,
        throttle_ip_max=6,
        throttle_window=3,
        login_rate=5,
        login_burst=40,
    )


def assert_refused(r: httpx.Response) -> None:
    assert r.status_code == 401
    assert r.json() == GENERIC_401
    assert r.headers["www-authenticate"]
    assert "set-cookie" not in r.headers or "sid=" not in r.headers["set-cookie"]


def raw_request(cluster: Cluster, data: bytes) -> bytes:
    with socket.create_connection((cluster.settings.host, cluster.settings.nginx_port), timeout=5) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_login_sets_hardened_cookies_and_a_fresh_256_bit_id(cluster: Cluster) -> None:
    with client(cluster) as c:
        _, r = new_user(c)
    cookies = r.headers.get_list("set-cookie")
    sid = next(h for h in cookies if h.startswith("sid="))
    csrf = next(h for h in cookies if h.startswith("csrf_token="))
    for attr in ("HttpOnly", "SameSite=Lax", "Path=/"):
        assert attr in sid
    assert "HttpOnly" not in csrf and "SameSite=Lax" in csrf  # scripts must read it to send it back
    value = sid.split(";")[0].removeprefix("sid=")
    tag, dot, secret = value.partition(".")
    assert len(tag) == 4 and dot and len(secret) == 43  # the user's slot tag, then 32 random bytes, base64url
    assert r.headers["cache-control"] == "no-store"


def test_redis_holds_only_hashes_of_session_ids(cluster: Cluster) -> None:
    with client(cluster) as c:
        new_user(c)
        sid = c.cookies["sid"]
    r = cluster_redis(cluster)
    keys = [k.decode() for k in r.scan_iter("sess:*")]
    assert keys and all(sid not in k for k in keys)
    assert all(sid.encode() not in (r.get(k) or b"") for k in keys)
    r.close()


def test_a_planted_session_id_never_becomes_valid(cluster: Cluster) -> None:
    planted = new_session_id()
    with client(cluster) as c:
        name = new_username()
        register(c, name)
        r = c.post("/api/login", json={"username": name, "password": PASSWORD}, headers={"Cookie": f"sid={planted}"})
        assert r.status_code == 200
        assert c.cookies["sid"] != planted
        assert c.get("/api/me").status_code == 200
    with client(cluster) as attacker:
        attacker.cookies.set("sid", planted)
        assert_refused(attacker.get("/api/me"))


def test_login_always_issues_a_new_id_and_drops_the_old_one(cluster: Cluster) -> None:
    with client(cluster) as c:
        name, _ = new_user(c)
        first = c.cookies["sid"]
        login(c, name)
        second = c.cookies["sid"]
    assert first != second
    with client(cluster) as old:
        old.cookies.set("sid", first)
        assert_refused(old.get("/api/me"))


def test_ambiguous_or_misplaced_session_ids_are_refused(cluster: Cluster) -> None:
    with client(cluster) as c:
        new_user(c)
        sid = c.cookies["sid"]
    url = "/api/me"
    with client(cluster) as c:
        assert_refused(c.get(url, headers={"Cookie": f"sid={sid}; sid={sid}"}))
        assert_refused(c.get(url, headers={"Cookie": f"sid={new_session_id()}; sid={sid}"}))
        assert_refused(c.get(f"{url}?sid={sid}"))
        assert_refused(c.get(url, headers={"X-Session-Id": sid, "Authorization": f"Bearer {sid}"}))
        assert_refused(c.post("/api/logout", json={"sid": sid}))
        assert_refused(c.get(url, headers={"Cookie": "sid=" + "A" * 42 + "'"}))  # malformed: never looked up
        assert c.get(url, headers={"Cookie": f"sid={sid}"}).status_code == 200


@pytest.mark.parametrize("bad", [b"\rX-Injected: 1", b"\x00", b"\x7f"])
def test_control_characters_in_cookies_are_refused(cluster: Cluster, bad: bytes) -> None:
    with client(cluster) as c:
        new_user(c)
        sid = c.cookies["sid"].encode()
    request = b"GET /api/me HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: sid=" + sid + bad + b"\r\n\r\n"
    status = int(raw_request(cluster, request).split(b" ", 2)[1])
    assert 400 <= status < 500


def test_idle_timeout_and_absolute_lifetime_are_enforced_server_side(cluster: Cluster) -> None:
    with client(cluster) as idle:
        new_user(idle)
        assert idle.get("/api/me").status_code == 200
        time.sleep(3.1)  # longer than the 2 s idle timeout, without touching the session
        assert_refused(idle.get("/api/me"))
    with client(cluster) as busy:
        new_user(busy)
        started = time.monotonic()
        statuses = []
        while time.monotonic() - started < 5.5:  # used every 0.5 s, so never idle; absolute limit is 4 s
            statuses.append(busy.get("/api/me").status_code)
            time.sleep(0.5)
    assert statuses[0] == 200 and statuses[-1] == 401
    assert statuses.index(401) >= 6  # it lived about 4 s, then died for good
    assert set(statuses[statuses.index(401) :]) == {401}


def test_logout_racing_requests_none_after_it_returns_200(cluster: Cluster) -> None:
    with client(cluster) as c:
        new_user(c)
        sid, csrf = c.cookies["sid"], c.cookies["csrf_token"]
    hammers = [client(cluster) for _ in range(4)]
    for h in hammers:
        h.cookies.set("sid", sid)
    with RequestLoop(lambda worker, n: hammers[worker].get("/api/me").status_code) as loop:
        assert wait_until(lambda: len(loop.outcomes) >= 20, 10)
        with client(cluster) as c:
            c.cookies.set("sid", sid)
            c.cookies.set("csrf_token", csrf)
            assert c.post("/api/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
        done = time.monotonic()
        assert wait_until(lambda: len(loop.between(done, float("inf"))) >= 20, 10)
    for h in hammers:
        h.close()
    after = [o.value for o in loop.outcomes if o.started > done]
    assert after and set(after) == {401}
    assert 200 in {o.value for o in loop.outcomes if o.started < done}


def _login_fingerprint(r: httpx.Response) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
    varying = {"date", "x-replica", "x-upstream-addr", "content-length"}
    return r.status_code, r.content, tuple(sorted((k, v) for k, v in r.headers.items() if k not in varying))


def test_unknown_user_wrong_password_and_disabled_account_look_the_same(cluster: Cluster) -> None:
    with client(cluster, local_address="127.0.7.1") as c:
        disabled = new_username("dis")
        register(c, disabled)
        users = Users(cluster.settings.users_db_path)
        users.set_disabled(disabled, True)
        users.close()
        known = new_username("known")
        register(c, known)
        timings: dict[str, list[float]] = {"unknown": [], "wrong": [], "disabled": []}
        prints = set()
        for _ in range(2):  # under the per-account limit of 3
            for label, body in (
                ("unknown", {"username": new_username("nobody"), "password": PASSWORD}),
                ("wrong", {"username": known, "password": PASSWORD + "x"}),
                ("disabled", {"username": disabled, "password": PASSWORD}),
            ):
                started = time.perf_counter()
                r = c.post("/api/login", json=body)
                timings[label].append(time.perf_counter() - started)
                prints.add(_login_fingerprint(r))
    assert len(prints) == 1
    status, body, _ = prints.pop()
    assert status == 401 and b"password" in body
    # Each path verifies one Argon2 hash: no path is an order of magnitude cheaper than another.
    medians = {k: statistics.median(v) for k, v in timings.items()}
    assert min(medians.values()) > 0.3 * max(medians.values()), medians


def test_password_length_limits(cluster: Cluster) -> None:
    with client(cluster) as c:
        ok = new_username()
        assert c.post("/api/register", json={"username": ok, "password": "p" * 128}).status_code == 201
        assert c.post("/api/login", json={"username": ok, "password": "p" * 128}).status_code == 200
        started = time.perf_counter()
        r = c.post("/api/register", json={"username": new_username(), "password": "p" * 129})
        assert r.status_code == 422 and "p" * 20 not in r.text  # the input is never echoed
        r = c.post("/api/login", json={"username": ok, "password": "p" * 10_000})
        assert r.status_code == 422
        assert time.perf_counter() - started < 1.0  # refused before any hashing


@pytest.mark.parametrize(
    "body",
    [b"{", b"[]", b'{"username": 1, "password": 2}', b"null", b'{"username":"a"}', b"\xff\xfe", b"{" * 2000],
)
def test_malformed_login_bodies_get_422_never_500(cluster: Cluster, body: bytes) -> None:
    with client(cluster) as c:
        r = c.post("/api/login", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert "detail" in r.json()


def test_throttling_per_account_is_shared_across_replicas_and_expires(cluster: Cluster) -> None:
    with client(cluster, local_address="127.0.8.1") as c:
        name = new_username()
        register(c, name)
        replicas = set()
        for _ in range(3):
            r = c.post("/api/login", json={"username": name, "password": "wrong password"})
            assert r.status_code == 401
            replicas.add(r.headers["x-replica"])
        assert len(replicas) == 3  # three failures, on three replicas, count as one account's
        locked = c.post("/api/login", json={"username": name, "password": PASSWORD})
        assert locked.status_code == 429
        assert 1 <= int(locked.headers["retry-after"]) <= 3
        time.sleep(int(locked.headers["retry-after"]) + 0.5)
        assert c.post("/api/login", json={"username": name, "password": PASSWORD}).status_code == 200


def test_throttling_per_address_ignores_a_spoofed_x_forwarded_for(cluster: Cluster) -> None:
    with client(cluster, local_address="127.0.9.1") as c:
        for i in range(6):
            spoof = {"X-Forwarded-For": f"10.0.0.{i}", "X-Real-IP": f"10.0.1.{i}"}
            r = c.post("/api/login", json={"username": new_username(), "password": "wrong pw"}, headers=spoof)
            assert r.status_code == 401
        r = c.post(
            "/api/login",
            json={"username": new_username(), "password": "wrong pw"},
            headers={"X-Forwarded-For": "1.2.3.4"},
        )
        assert r.status_code == 429
    with client(cluster, local_address="127.0.10.1") as other:
        new_user(other)  # another address is not affected
        assert other.get("/api/me").status_code == 200


def test_oversized_cookie_and_body_are_refused_by_nginx(cluster: Cluster) -> None:
    with client(cluster) as c:
        r = c.get("/api/me", headers={"Cookie": "sid=" + "A" * 65536})
        assert r.status_code in (400, 431) and "x-replica" not in r.headers
        r = c.post("/api/register", content=b"{" + b" " * 20_000 + b"}", headers={"content-type": "application/json"})
        assert r.status_code == 413 and "x-replica" not in r.headers


def test_authenticated_responses_are_not_cached(cluster: Cluster) -> None:
    with client(cluster) as c:
        _, r = new_user(c)
        assert r.headers["cache-control"] == "no-store"
        assert c.get("/api/me").headers["cache-control"] == "no-store"
        assert (
            c.post("/api/logout", headers={"X-CSRF-Token": c.cookies["csrf_token"]}).headers["cache-control"]
            == "no-store"
        )


def test_login_flood_is_rate_limited_by_nginx(cluster: Cluster) -> None:
    # Last in the module: it spends the login burst.
    statuses: list[int] = []

    def fire() -> None:
        with client(cluster, local_address="127.0.11.1") as c:
            for _ in range(15):
                statuses.append(
                    c.post("/api/login", content=b"{", headers={"content-type": "application/json"}).status_code
                )

    threads = [threading.Thread(target=fire) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses.count(429) > 0
    assert set(statuses) <= {422, 429}


def test_secure_cookies_use_the_host_prefix(start_cluster) -> None:
    secure = start_cluster(auth_mode="session", session_store="redis", cookie_secure=True, replicas=1)
    with client(secure) as c:
        _, r = new_user(c)
        cookies = r.headers.get_list("set-cookie")
        sid = next(h for h in cookies if h.startswith("__Host-sid="))
        for attr in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
            assert attr in sid
        assert "Domain=" not in sid
        assert all("Secure" in h for h in cookies)
        value = sid.split(";")[0].removeprefix("__Host-sid=")
        # The browser sends it back under its prefixed name; the plain name is not accepted.
        assert c.get("/api/me", headers={"Cookie": f"__Host-sid={value}"}).status_code == 200
        assert c.get("/api/me", headers={"Cookie": f"sid={value}"}).status_code == 401
