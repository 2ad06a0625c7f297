"""The two chapters of the story that came last: the cookie alone (AUTH_MODE=cookie), and session clustering
by replication (SESSION_STORE=replicated), on real clusters, hitting every replica."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from urllib.parse import unquote

import httpx
import orjson
import pytest
from helpers import PASSWORD, client, new_user, new_username, register, spread

from scaleout.core.replication import SIGNATURE, sign, snapshot_request
from scaleout.core.sessions import Session, memory_key, new_handle, new_session_id
from scaleout.lab.drivers.local import Cluster
from scaleout.lab.load import wait_until

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cookie_cluster(start_cluster: Callable[..., Cluster]) -> Cluster:
    return start_cluster(auth_mode="cookie")


@pytest.fixture(scope="module")
def replicated(start_cluster: Callable[..., Cluster]) -> Cluster:
    return start_cluster(auth_mode="session", session_store="replicated", replication_timeout=0.5)


def test_the_cookie_alone_scales_and_is_forged_stolen_and_never_revoked(cookie_cluster: Cluster) -> None:
    with client(cookie_cluster) as c:
        name, r = new_user(c)
        assert r.json()["auth_mode"] == "cookie"
        assert c.cookies["user"] == name
        assert unquote(c.cookies["password"]) == PASSWORD  # the capture is the password
        # Short-lived (a browser sends them to every port of the host), not the 24 h they once had.
        assert {h.split(";")[0].split("=")[0]: "Max-Age=600" in h for h in r.headers.get_list("set-cookie")} == {
            "user": True,
            "password": True,
        }
        assert spread([c.get("/api/me") for _ in range(9)]) == {("api-1", 200): 3, ("api-2", 200): 3, ("api-3", 200): 3}
        captured = dict(c.cookies)
        assert c.post("/api/logout").status_code == 204
        assert c.get("/api/me").status_code == 401  # this browser forgot...
    url = cookie_cluster.settings.public_url
    with httpx.Client(base_url=url) as thief:
        thief.cookies.update(captured)
        assert {thief.get("/api/me").status_code for _ in range(6)} == {200}  # ...the server never knew
    with httpx.Client(base_url=url) as forger:
        forger.cookies.set("user", "bob")  # nobody logged in as bob
        r = forger.get("/api/me")
        assert r.status_code == 200 and r.json()["username"] == "bob"
    for junk in ("../etc", "", "A" * 100):
        assert httpx.get(f"{url}/api/me", headers={"Cookie": f"user={junk}"}).status_code == 401
    assert httpx.get(f"{url}/api/profile-cookie", params={"size": "99999"}).status_code == 422


def test_cookie_mode_prints_its_warning(start_cluster: Callable[..., Cluster], tmp_path) -> None:
    from scaleout.lab.drivers.local import COOKIE_WARNING
    from scaleout.lab.ports import isolated_settings

    said: list[str] = []
    cluster = Cluster(isolated_settings(tmp_path / "c", auth_mode="cookie", replicas=1))
    try:
        cluster.up(progress=said.append)
    finally:
        cluster.down()
    assert said[0] == COOKIE_WARNING
    assert all(s.host == "127.0.0.1" for s in cluster.services.values())  # loopback only


def test_login_and_logout_in_another_mode_clear_the_cookie_stages_cookies(replicated: Cluster) -> None:
    """A browser that went through the cookie stage still carries `user` and the password in the clear: the
    next login or logout in any other mode clears them."""
    with client(replicated) as c:
        name = new_username("stage")
        register(c, name)
        c.cookies.set("user", name, domain="127.0.0.1")  # as the cookie stage set them
        c.cookies.set("password", "in%20the%20clear", domain="127.0.0.1")
        r = c.post("/api/login", json={"username": name, "password": PASSWORD})
        assert r.status_code == 200
        cleared = [h for h in r.headers.get_list("set-cookie") if h.startswith(("user=;", "password=;"))]
        assert sorted(h.split("=")[0] for h in cleared) == ["password", "user"]
        assert all("Max-Age=0" in h for h in cleared)
        assert "user" not in c.cookies and "password" not in c.cookies
        c.cookies.set("password", "again", domain="127.0.0.1")
        out = c.post("/api/logout", headers={"X-CSRF-Token": c.cookies["csrf_token"]})
        assert out.status_code == 204 and any(h.startswith("password=;") for h in out.headers.get_list("set-cookie"))


def test_a_login_on_one_replica_is_usable_on_every_other_at_once(replicated: Cluster) -> None:
    with client(replicated) as c:
        new_user(c)  # answered by one replica, which sent the session to the others before answering
        assert spread([c.get("/api/me") for _ in range(9)]) == {("api-1", 200): 3, ("api-2", 200): 3, ("api-3", 200): 3}
        csrf = c.cookies["csrf_token"]
        sid = c.cookies["sid"]
        assert c.post("/api/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
    with httpx.Client(base_url=replicated.settings.public_url) as again:
        again.cookies.set("sid", sid)
        assert {again.get("/api/me").status_code for _ in range(6)} == {401}  # the logout reached everyone


def test_a_restarted_replica_gets_the_sessions_back_from_its_peers(replicated: Cluster) -> None:
    with client(replicated) as c:
        new_user(c)
        replicated.stop("api-2", kill=True)
        replicated.start("api-2")  # copies a peer's sessions before it reports healthy
        port = replicated.settings.api_port("api-2")
        direct = httpx.get(f"http://127.0.0.1:{port}/api/me", cookies={"sid": c.cookies["sid"]})
        assert direct.status_code == 200


def test_an_unreachable_peer_delays_a_login_by_the_timeout_only(replicated: Cluster) -> None:
    s = replicated.settings
    pid = replicated.services["api-3"].pid
    assert pid
    os.kill(pid, signal.SIGSTOP)  # it accepts connections and never answers: a hung peer
    try:
        # Straight to api-1 (nginx would also send users to the hung replica): register and log in there.
        with httpx.Client(base_url=s.replica_url("api-1"), timeout=30) as c:
            timings = []
            for _ in range(3):
                name = new_username("hung")
                assert c.post("/api/register", json={"username": name, "password": PASSWORD}).status_code == 201
                started = time.monotonic()
                assert c.post("/api/login", json={"username": name, "password": PASSWORD}).status_code == 200
                timings.append(time.monotonic() - started)
            sid = c.cookies["sid"]
        # Bounded: a login waited about one replication timeout for the hung peer, not forever.
        assert s.replication_timeout <= max(timings) < s.replication_timeout + 2, timings
        assert httpx.get(f"{s.replica_url('api-2')}/api/me", cookies={"sid": sid}).status_code == 200
    finally:
        os.kill(pid, signal.SIGCONT)
    assert wait_until(lambda: httpx.get(f"{s.replica_url('api-3')}/healthz").status_code == 200, 10)


def test_forged_garbage_and_oversized_replication_messages_are_dropped(replicated: Cluster) -> None:
    s = replicated.settings
    url = f"{s.replica_url('api-1')}/internal/replicate"
    key = s.secret("session_key").encode()
    planted = b'{"op":"put","key":"' + b"00" * 32 + b'","s":{"u":"mallory","c":"c","t":1e10,"i":"x","h":"h"}}'
    assert httpx.post(url, content=planted).status_code == 400  # unsigned
    assert httpx.post(url, content=planted, headers={SIGNATURE: "0" * 64}).status_code == 400  # forged
    assert httpx.post(url, content=b"\xff garbage", headers={SIGNATURE: sign(key, b"\xff garbage")}).status_code == 400
    odd = b'{"op":"put","key":"zz"}'
    assert httpx.post(url, content=odd, headers={SIGNATURE: sign(key, odd)}).status_code == 400
    big = b"x" * (200 * 1024)
    assert httpx.post(url, content=big, headers={SIGNATURE: sign(key, big)}).status_code == 413
    assert httpx.get(f"{s.replica_url('api-1')}/internal/sessions").status_code == 403
    old_style = {SIGNATURE: sign(key, b"snapshot")}  # the constant request that once dumped every session
    assert httpx.get(f"{s.replica_url('api-1')}/internal/sessions", headers=old_style).status_code == 403
    # A MAC header with a non-ASCII byte is a refusal like any wrong MAC, never a 500.
    odd_mac = {SIGNATURE: "\u00e9".encode("latin-1") + b"0" * 63}
    assert httpx.post(url, content=planted, headers=odd_mac).status_code == 400
    assert httpx.get(f"{s.replica_url('api-1')}/internal/sessions", headers=odd_mac).status_code == 403
    # The replica is fine, and nginx never exposes the replication endpoints.
    with client(replicated) as c:
        new_user(c)
        assert {c.get("/api/me").status_code for _ in range(3)} == {200}
        assert c.post("/internal/replicate", content=planted).status_code == 404


def _signed(key: bytes, change: dict[str, object], seq: int) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps({"from": "test", "boot": "7e" * 8, "seq": seq, "ts": time.time(), "change": change})
    return body, {SIGNATURE: sign(key, body), "content-type": "application/json"}


def test_an_ended_session_is_never_brought_back_by_a_late_or_replayed_put(replicated: Cluster) -> None:
    s = replicated.settings
    url = f"{s.replica_url('api-1')}/internal/replicate"
    key = s.secret("session_key").encode()
    sid = new_session_id()
    login = {
        "op": "put",
        "key": memory_key(sid.encode()).hex(),
        "s": Session("latecomer", "c" * 43, time.time(), "uid-late", new_handle()).as_dict(),
    }
    seq = int(time.time() * 1000)  # this test's sender: a fresh counter on every run
    first = _signed(key, login, seq)
    assert httpx.post(url, content=first[0], headers=first[1]).status_code == 204
    me = f"{s.replica_url('api-1')}/api/me"
    assert httpx.get(me, cookies={"sid": sid}).status_code == 200
    gone = _signed(key, {"op": "del", "key": login["key"]}, seq + 1)
    assert httpx.post(url, content=gone[0], headers=gone[1]).status_code == 204
    assert httpx.get(me, cookies={"sid": sid}).status_code == 401
    assert httpx.post(url, content=first[0], headers=first[1]).status_code == 204  # the capture, replayed
    late = _signed(key, login, seq + 2)  # the same login, sent again late (as a resend would)
    assert httpx.post(url, content=late[0], headers=late[1]).status_code == 204
    assert httpx.get(me, cookies={"sid": sid}).status_code == 401
    stale = orjson.dumps({"from": "test", "boot": "7e" * 8, "seq": seq + 3, "ts": time.time() - 3600, "change": login})
    assert httpx.post(url, content=stale, headers={SIGNATURE: sign(key, stale)}).status_code == 400
    nonce, ts = "f" * 32, repr(time.time())
    asked = {"params": {"nonce": nonce, "ts": ts}, "headers": {SIGNATURE: snapshot_request(key, nonce, ts)}}
    assert httpx.get(f"{s.replica_url('api-2')}/internal/sessions", **asked).status_code == 200  # type: ignore[arg-type]
    assert httpx.get(f"{s.replica_url('api-2')}/internal/sessions", **asked).status_code == 403  # type: ignore[arg-type]


def _logged_in(c: httpx.Client, prefix: str) -> tuple[str, str]:
    name = new_username(prefix)
    assert c.post("/api/register", json={"username": name, "password": PASSWORD}).status_code == 201
    assert c.post("/api/login", json={"username": name, "password": PASSWORD}).status_code == 200
    return c.cookies["sid"], c.cookies["csrf_token"]


def test_a_logout_a_hung_replica_missed_is_a_503_and_reaches_it_once_it_answers(replicated: Cluster) -> None:
    s = replicated.settings
    with httpx.Client(base_url=s.replica_url("api-1"), timeout=30) as c:
        sid, csrf = _logged_in(c, "hung")
        stolen = {"sid": sid}
        assert httpx.get(f"{s.replica_url('api-3')}/api/me", cookies=stolen).status_code == 200
        pid = replicated.services["api-3"].pid
        assert pid
        os.kill(pid, signal.SIGSTOP)  # up (it accepts connections) but silent
        try:
            out = c.post("/api/logout", headers={"X-CSRF-Token": csrf})
            assert out.status_code == 503 and out.headers["retry-after"] == "1"  # not confirmed: never a 204
            assert "not every replica confirmed" in out.json()["detail"]
            assert httpx.get(f"{s.replica_url('api-2')}/api/me", cookies=stolen).status_code == 401
        finally:
            os.kill(pid, signal.SIGCONT)
    # Resent until acknowledged: the replica that missed it refuses the stolen cookie soon after it answers.
    assert wait_until(lambda: httpx.get(f"{s.replica_url('api-3')}/api/me", cookies=stolen).status_code == 401, 10)


def test_a_logout_while_a_replica_is_down_is_confirmed_and_the_replica_comes_back_without_it(
    replicated: Cluster,
) -> None:
    s = replicated.settings
    with httpx.Client(base_url=s.replica_url("api-1"), timeout=30) as c:
        sid, csrf = _logged_in(c, "down")
        replicated.stop("api-2", kill=True)
        try:
            # A stopped replica serves nobody: the logout is confirmed by the replicas that are up.
            assert c.post("/api/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
        finally:
            replicated.start("api-2")  # copies the live peers' sessions and tombstones before it listens
    for replica in s.replica_names:
        assert httpx.get(f"{s.replica_url(replica)}/api/me", cookies={"sid": sid}).status_code == 401
