"""jwt with JWT_REVOCATION=denylist (ES256 here, HS256 below): logout revokes the access token at once."""

from __future__ import annotations

import pytest
from helpers import bearer, client, decode_part, new_user, spread

from scaleout.lab.drivers.local import Cluster

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(start_cluster) -> Cluster:
    return start_cluster(auth_mode="jwt", jwt_revocation="denylist", jwt_alg="ES256")


def test_es256_tokens_verify_on_every_replica(cluster: Cluster) -> None:
    with client(cluster) as c:
        _, login = new_user(c)
        token = login.json()["access_token"]
        assert decode_part(token, 0)["alg"] == "ES256"
        counts = spread([c.get("/api/me", headers=bearer(token)) for _ in range(9)])
    assert counts == {("api-1", 200): 3, ("api-2", 200): 3, ("api-3", 200): 3}


def test_logout_revokes_the_access_token_on_every_replica_at_once(cluster: Cluster) -> None:
    with client(cluster) as c:
        _, login = new_user(c)
        token = login.json()["access_token"]
        assert c.get("/api/me", headers=bearer(token)).status_code == 200
        assert c.post("/api/logout", headers=bearer(token)).status_code == 204
        after = [c.get("/api/me", headers=bearer(token)) for _ in range(9)]
    assert spread(after) == {("api-1", 401): 3, ("api-2", 401): 3, ("api-3", 401): 3}


def test_denylist_needs_redis_so_redis_down_means_503_not_200(cluster: Cluster) -> None:
    with client(cluster) as c:
        _, login = new_user(c)
        token = login.json()["access_token"]
        cluster.stop("redis")
        try:
            statuses = {c.get("/api/me", headers=bearer(token)).status_code for _ in range(6)}
        finally:
            cluster.start("redis")
        assert statuses == {503}
        assert c.get("/api/me", headers=bearer(token)).status_code == 200


def test_hs256_cluster_verifies_with_the_shared_secret(start_cluster) -> None:
    hs = start_cluster(auth_mode="jwt", jwt_alg="HS256", replicas=2)
    with client(hs) as c:
        _, login = new_user(c)
        token = login.json()["access_token"]
        assert decode_part(token, 0)["alg"] == "HS256"
        counts = spread([c.get("/api/me", headers=bearer(token)) for _ in range(4)])
        assert counts == {("api-1", 200): 2, ("api-2", 200): 2}
        assert c.get("/auth/.well-known/jwks.json").json() == {"keys": []}  # a shared secret is never published
