"""jwt (stateless): any replica verifies a token alone, even with Redis and the auth service down."""

from __future__ import annotations

import threading
import time

import pytest
from helpers import bearer, client, decode_part, forge, new_user, signing_key, spread, valid_claims

from scaleout.lab.drivers.local import Cluster

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(start_cluster) -> Cluster:
    return start_cluster(auth_mode="jwt", jwt_revocation="none", jwt_alg="RS256")


def test_login_returns_tokens_and_every_replica_accepts_them(cluster: Cluster) -> None:
    with client(cluster) as c:
        name, login = new_user(c)
        body = login.json()
        assert body["auth_mode"] == "jwt" and body["token_type"] == "bearer"
        assert body["expires_in"] == cluster.settings.access_ttl
        assert "sid" not in c.cookies
        header = decode_part(body["access_token"], 0)
        assert header["alg"] == "RS256" and header["kid"]
        responses = [c.get("/api/me", headers=bearer(body["access_token"])) for _ in range(30)]
    assert spread(responses) == {("api-1", 200): 10, ("api-2", 200): 10, ("api-3", 200): 10}
    assert {r.json()["username"] for r in responses} == {name}
    assert all(r.headers["cache-control"] == "no-store" for r in responses)


def test_jwks_is_published_through_nginx(cluster: Cluster) -> None:
    with client(cluster) as c:
        r = c.get("/auth/.well-known/jwks.json")
    assert r.status_code == 200
    keys = r.json()["keys"]
    assert keys and all(k["kid"] and k["alg"] == "RS256" and "d" not in k for k in keys)


def test_tokens_keep_working_with_redis_and_auth_down(cluster: Cluster) -> None:
    with client(cluster) as c:
        _, login = new_user(c)
        token = login.json()["access_token"]
        cluster.stop("redis")
        cluster.stop("auth")
        try:
            responses = [c.get("/api/me", headers=bearer(token)) for _ in range(30)]
            # Logging in needs the auth service: that is what stateless verification does not remove.
            assert c.post("/api/login", json={"username": "x" * 3, "password": "y" * 8}).status_code == 503
        finally:
            cluster.start("redis")
            cluster.start("auth")
    assert spread(responses) == {("api-1", 200): 10, ("api-2", 200): 10, ("api-3", 200): 10}


def test_forged_tokens_are_refused_on_every_replica(cluster: Cluster) -> None:
    key = signing_key(cluster)
    with client(cluster) as c:
        name, login = new_user(c)
        good = login.json()["access_token"]
        s = good.rsplit(".", 1)[1]
        header = decode_part(good, 0)
        edited = forge(header, {**decode_part(good, 1), "sub": "admin"})
        forged = {
            "payload edited under the old signature": f"{edited.rsplit('.', 1)[0]}.{s}",
            "wrong aud": forge(header, valid_claims(cluster, name, aud="someone-else"), key),
            "expired": forge(
                header, valid_claims(cluster, name, iat=int(time.time()) - 120, exp=int(time.time()) - 60), key
            ),
            "exp == now": forge(header, valid_claims(cluster, name, exp=int(time.time())), key),
            "alg none": forge({**header, "alg": "none"}, valid_claims(cluster, name)),
        }
        for label, token in forged.items():
            responses = [c.get("/api/me", headers=bearer(token)) for _ in range(3)]
            assert {r.status_code for r in responses} == {401}, label
            assert {r.headers["x-replica"] for r in responses} == {"api-1", "api-2", "api-3"}, label
            assert all(r.headers["www-authenticate"].startswith("Bearer") for r in responses), label
            assert all(r.json() == {"detail": "not authenticated"} for r in responses), label
        # The genuine token still works after the flood of forgeries.
        assert c.get("/api/me", headers=bearer(good)).status_code == 200


def test_logout_without_denylist_leaves_the_access_token_valid_until_exp(cluster: Cluster) -> None:
    with client(cluster) as c:
        _, login = new_user(c)
        tokens = login.json()
        assert c.post("/api/logout", headers=bearer(tokens["access_token"])).status_code == 204
        after = [c.get("/api/me", headers=bearer(tokens["access_token"])) for _ in range(9)]
        assert spread(after) == {("api-1", 200): 3, ("api-2", 200): 3, ("api-3", 200): 3}
        # The refresh token, though, is revoked by the logout.
        assert c.post("/api/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401


def test_refresh_is_single_use_and_reuse_revokes_the_family(cluster: Cluster) -> None:
    with client(cluster) as c:
        _, login = new_user(c)
        first = login.json()["refresh_token"]
        r = c.post("/api/refresh", json={"refresh_token": first})
        assert r.status_code == 200
        second = r.json()
        assert second["access_token"] != login.json()["access_token"]
        assert c.get("/api/me", headers=bearer(second["access_token"])).status_code == 200
        # The spent token comes back (stolen?): refused, and the whole family with it.
        assert c.post("/api/refresh", json={"refresh_token": first}).status_code == 401
        assert c.post("/api/refresh", json={"refresh_token": second["refresh_token"]}).status_code == 401


def test_two_concurrent_refreshes_with_one_token_yield_exactly_one_success(cluster: Cluster) -> None:
    with client(cluster) as c:
        _, login = new_user(c)
    token = login.json()["refresh_token"]
    statuses: list[int] = []
    barrier = threading.Barrier(4)

    def refresh() -> None:
        with client(cluster) as c:
            barrier.wait()
            statuses.append(c.post("/api/refresh", json={"refresh_token": token}).status_code)

    threads = [threading.Thread(target=refresh) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200, 401, 401, 401]


def test_refresh_token_is_not_an_access_token(cluster: Cluster) -> None:
    with client(cluster) as c:
        _, login = new_user(c)
        refresh_token = login.json()["refresh_token"]
        assert c.get("/api/me", headers=bearer(refresh_token)).status_code == 401
        access = login.json()["access_token"]
        assert c.post("/api/refresh", json={"refresh_token": access}).status_code == 401
