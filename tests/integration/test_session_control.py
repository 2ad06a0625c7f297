"""Sessions you can see and end: list, revoke one, logout everywhere, delete the account, the per-user cap.

Every mode gets the same controls through nginx; what each mode can promise differs (memory: per replica;
jwt without the denylist: access tokens live until `exp`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import pytest
from helpers import PASSWORD, bearer, client, login, new_username, register

from scaleout.lab.drivers.local import Cluster
from scaleout.lab.load import RequestLoop, wait_until

pytestmark = pytest.mark.cluster


class Device:
    """One logged-in client of a user: its own cookie jar (session modes) or token pair (jwt)."""

    def __init__(self, cluster: Cluster, username: str, agent: str) -> None:
        self.c = client(cluster)
        self.c.headers["User-Agent"] = agent
        body = login(self.c, username).json()
        self.token = body.get("access_token")
        self.refresh_token = body.get("refresh_token")

    def headers(self, write: bool = False) -> dict[str, str]:
        if self.token:
            return bearer(self.token)
        return {"X-CSRF-Token": self.c.cookies.get("csrf_token") or ""} if write else {}

    def get(self, path: str) -> httpx.Response:
        return self.c.get(path, headers=self.headers())

    def write(self, method: str, path: str, **kw: object) -> httpx.Response:
        return self.c.request(method, path, headers=self.headers(write=True), **kw)  # type: ignore[arg-type]

    def me_everywhere(self, n: int = 6) -> set[int]:
        return {self.get("/api/me").status_code for _ in range(n)}

    def close(self) -> None:
        self.c.close()


def devices(cluster: Cluster, n: int) -> tuple[str, list[Device]]:
    name = new_username("dev")
    with client(cluster) as c:
        register(c, name)
    return name, [Device(cluster, name, f"device-{i}") for i in range(n)]


def listed(device: Device) -> list[dict]:
    r = device.get("/api/sessions")
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    return r.json()["sessions"]


def handle_of(device: Device) -> str:
    return next(s["id"] for s in listed(device) if s["current"])


@pytest.fixture(scope="module", params=["session-redis", "jwt-none", "jwt-denylist"])
def cluster(request, start_cluster: Callable[..., Cluster]) -> Cluster:
    modes = {
        "session-redis": {"auth_mode": "session", "session_store": "redis"},
        "jwt-none": {"auth_mode": "jwt", "jwt_revocation": "none"},
        "jwt-denylist": {"auth_mode": "jwt", "jwt_revocation": "denylist"},
    }[request.param]
    return start_cluster(**modes, max_sessions_per_user=4)


def test_the_list_shows_every_login_once_with_one_current_and_no_secret(cluster: Cluster) -> None:
    _, devs = devices(cluster, 3)
    try:
        for dev in devs:
            seen = [listed(dev) for _ in range(3)]  # three requests: three replicas
            assert all(s == seen[0] for s in seen)
            assert len(seen[0]) == 3
            assert [s["current"] for s in seen[0]].count(True) == 1
            assert {s["user_agent"] for s in seen[0]} == {"device-0", "device-1", "device-2"}
            entry = seen[0][0]
            assert set(entry) == {"id", "created", "last_seen", "current", "user_agent", "ip"}
            assert entry["ip"] == "127.0.0.1"
            assert abs(entry["created"] - time.time()) < 60 and entry["last_seen"] >= entry["created"]
            secrets = [dev.c.cookies.get("sid"), dev.token, dev.refresh_token]
            assert not any(s and e["id"] in s for s in secrets if s for e in seen[0])
    finally:
        for dev in devs:
            dev.close()


def test_ending_another_session_ends_it_on_every_replica_at_once(cluster: Cluster) -> None:
    _, (a, b) = devices(cluster, 2)
    try:
        target = handle_of(b)
        assert a.write("DELETE", f"/api/sessions/{target}").status_code == 204
        # jwt none: the access token lives to `exp`.
        assert b.me_everywhere() == ({401} if revokes_access_at_once(cluster) else {200})
        assert a.me_everywhere() == {200}
        assert target not in {s["id"] for s in listed(a)}
        if b.refresh_token:  # the family is over at once in every jwt mode
            assert b.c.post("/api/refresh", json={"refresh_token": b.refresh_token}).status_code == 401
        assert a.write("DELETE", f"/api/sessions/{target}").status_code == 404  # already gone
    finally:
        a.close()
        b.close()


def test_bad_session_ids_and_other_users_sessions_are_404_never_500(cluster: Cluster) -> None:
    _, (a,) = devices(cluster, 1)
    _, (mallory,) = devices(cluster, 1)
    try:
        mine = handle_of(a)
        for bad in ("x", "A" * 16, "..%2F..%2Fetc", "A" * 64):
            assert a.write("DELETE", f"/api/sessions/{bad}").status_code == 404
        assert a.write("DELETE", "/api/sessions/%00%00").status_code == 400  # nginx refuses a NUL in a path
        assert a.write("DELETE", "/api/sessions/" + "A" * 500).status_code in (404, 422)
        assert mallory.write("DELETE", f"/api/sessions/{mine}").status_code == 404
        assert a.me_everywhere() == {200}
        huge = a.write("POST", "/api/logout-all", content=b"{" + b" " * 40_000 + b"}")
        assert huge.status_code == 413
        assert a.write("POST", "/api/logout-all", content=b"{not json").status_code == 422
        assert a.write("POST", "/api/logout-all", json={"keep_current": "perhaps"}).status_code == 422
        assert a.me_everywhere() == {200}
    finally:
        a.close()
        mallory.close()


def test_logout_all_keeps_the_current_session_when_asked(cluster: Cluster) -> None:
    _, (a, b, c) = devices(cluster, 3)
    try:
        assert a.write("POST", "/api/logout-all", json={"keep_current": True}).status_code == 204
        assert a.me_everywhere() == {200}
        assert [s["current"] for s in listed(a)] == [True]
        if b.refresh_token:
            assert b.c.post("/api/refresh", json={"refresh_token": b.refresh_token}).status_code == 401
        expected = {401} if revokes_access_at_once(cluster) else {200}
        assert b.me_everywhere() == expected and c.me_everywhere() == expected
        assert a.write("POST", "/api/logout-all", json={"keep_current": False}).status_code == 204
        assert a.me_everywhere() == ({401} if revokes_access_at_once(cluster) else {200})
    finally:
        for d in (a, b, c):
            d.close()


def test_a_login_beyond_the_cap_ends_the_least_recently_used(cluster: Cluster) -> None:
    name, devs = devices(cluster, 4)  # the cap of this cluster
    try:
        # Used in this order, so devs[0] is the least recently used (session mode renews on use; jwt, on login).
        oldest = [handle_of(d) for d in devs][0]  # noqa: RUF015 - every device is used
        extra = Device(cluster, name, "device-extra")
        ids = {s["id"] for s in listed(extra)}
        assert len(ids) == 4 and oldest not in ids
        if devs[0].refresh_token:
            assert devs[0].c.post("/api/refresh", json={"refresh_token": devs[0].refresh_token}).status_code == 401
        assert devs[0].me_everywhere() == ({401} if revokes_access_at_once(cluster) else {200})
        assert all(d.me_everywhere() == {200} for d in devs[1:])
        extra.close()
    finally:
        for d in devs:
            d.close()


def test_deleting_the_account_needs_the_password_and_leaves_nothing_to_a_namesake(cluster: Cluster) -> None:
    name, (a, b) = devices(cluster, 2)
    try:
        assert a.write("DELETE", "/api/me", json={"password": "wrong password"}).status_code == 403
        assert a.write("DELETE", "/api/me", json={}).status_code == 422
        assert a.me_everywhere() == {200}
        assert a.write("DELETE", "/api/me", json={"password": PASSWORD}).status_code == 204
        with client(cluster) as c:
            r = c.post("/api/login", json={"username": name, "password": PASSWORD})
            assert r.status_code == 401
            register(c, name)  # the name is free again: a new account
        for dev in (a, b):
            assert dev.me_everywhere() == ({401} if revokes_access_at_once(cluster) else {200})
            if dev.refresh_token:
                assert dev.c.post("/api/refresh", json={"refresh_token": dev.refresh_token}).status_code == 401
        newcomer = Device(cluster, name, "newcomer")
        assert [s["user_agent"] for s in listed(newcomer)] == ["newcomer"]  # inherits none of the old sessions
        newcomer.close()
    finally:
        a.close()
        b.close()


def revokes_access_at_once(cluster: Cluster) -> bool:
    return cluster.settings.auth_mode == "session" or cluster.settings.jwt_revocation == "denylist"


def test_no_request_that_started_after_the_revocation_returned_is_let_in(cluster: Cluster) -> None:
    _, (a, b) = devices(cluster, 2)
    target = handle_of(b)
    credential = b.headers() if b.token else {"Cookie": f"sid={b.c.cookies.get('sid')}"}
    hammers = [client(cluster) for _ in range(4)]
    with RequestLoop(lambda worker, n: hammers[worker].get("/api/me", headers=credential).status_code) as loop:
        assert wait_until(lambda: len(loop.outcomes) >= 20, 10)
        assert a.write("DELETE", f"/api/sessions/{target}").status_code == 204
        returned = time.monotonic()
        assert wait_until(lambda: len(loop.between(returned, float("inf"))) >= 40, 10)
    for h in hammers:
        h.close()
    a.close()
    b.close()
    log = [(o.started, o.value) for o in loop.outcomes]
    # Requests in flight while it was deleted never brought it back: not listed, still refused.
    if revokes_access_at_once(cluster):
        with client(cluster) as c:
            assert c.get("/api/me", headers=credential).status_code == 401
    before = {status for started, status in log if started <= returned}
    after = {status for started, status in log if started > returned}
    assert 200 in before
    # jwt without the denylist: the access token stays good until `exp` (the lesson, measured here).
    assert after == ({401} if revokes_access_at_once(cluster) else {200})


def test_cookie_writes_need_the_csrf_header_and_bearer_writes_do_not(cluster: Cluster) -> None:
    _, (a, b) = devices(cluster, 2)
    try:
        target = handle_of(b)
        if a.token:  # a bearer token is never sent by a browser on its own: no CSRF header needed
            assert a.c.delete(f"/api/sessions/{target}", headers=bearer(a.token)).status_code == 204
            return
        for method, path, body in (
            ("DELETE", f"/api/sessions/{target}", None),
            ("POST", "/api/logout-all", {"keep_current": True}),
            ("DELETE", "/api/me", {"password": PASSWORD}),
            ("POST", "/api/logout", None),
        ):
            assert a.c.request(method, path, json=body).status_code == 403
            wrong = {"X-CSRF-Token": "x" * 43}
            assert a.c.request(method, path, json=body, headers=wrong).status_code == 403
        assert a.me_everywhere() == {200} and b.me_everywhere() == {200}
    finally:
        a.close()
        b.close()


def test_memory_sessions_are_listed_and_ended_per_replica(start_cluster: Callable[..., Cluster]) -> None:
    memory = start_cluster(auth_mode="session", session_store="memory", lb_mode="sticky", max_sessions_per_user=10)
    _, devs = devices(memory, 6)
    try:
        pinned = {id(d): d.get("/api/me").headers["x-replica"] for d in devs}
        assert all(d.me_everywhere() == {200} for d in devs)  # sticky: always the replica that holds it
        for d in devs:
            same = [x for x in devs if pinned[id(x)] == pinned[id(d)]]
            assert len(listed(d)) == len(same)  # only what the answering replica holds
        a = devs[0]
        neighbour = next((x for x in devs[1:] if pinned[id(x)] == pinned[id(a)]), None)
        stranger = next((x for x in devs[1:] if pinned[id(x)] != pinned[id(a)]), None)
        if stranger is not None:  # a session on another replica is unknown here
            assert a.write("DELETE", f"/api/sessions/{handle_of(stranger)}").status_code == 404
            assert stranger.me_everywhere() == {200}
        if neighbour is not None:
            assert a.write("DELETE", f"/api/sessions/{handle_of(neighbour)}").status_code == 204
            assert neighbour.me_everywhere() == {401}
        assert stranger is not None or neighbour is not None
    finally:
        for d in devs:
            d.close()


def test_logout_all_racing_a_new_login_ends_it_whole_or_leaves_it_whole(cluster: Cluster) -> None:
    name, (a,) = devices(cluster, 1)
    found: dict[str, Device] = {}

    def log_in() -> None:
        found["c"] = Device(cluster, name, "racing-login")

    for _ in range(4):
        racer = threading.Thread(target=log_in)
        racer.start()
        assert a.write("POST", "/api/logout-all", json={"keep_current": False}).status_code in (204, 401)
        racer.join()
        c = found["c"]
        witness = Device(cluster, name, "witness")  # logged in after both finished
        others = [s for s in listed(witness) if not s["current"]]
        if c.refresh_token:  # jwt: its family is alive if and only if its refresh token still works
            works = c.c.post("/api/refresh", json={"refresh_token": c.refresh_token}).status_code == 200
        else:
            works = c.me_everywhere() == {200}
        assert len(others) == (1 if works else 0), (works, others)
        if works:
            assert others[0]["user_agent"] == "racing-login"
        for d in (c, witness):
            d.write("POST", "/api/logout-all", json={"keep_current": False})
            d.close()
        a.close()
        a = Device(cluster, name, "device-a")
    a.close()
