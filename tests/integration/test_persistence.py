"""REDIS_PERSISTENCE on real clusters: what a full stop and start (`make down`, `make up`) keeps.

With `aof` the cluster's Redis keeps sessions, logouts and the denylist; with `none` it forgets them all,
which is why a revoked access token would be valid again until it expires."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from helpers import bearer, client, new_user

from scaleout.lab.drivers.local import Cluster

pytestmark = pytest.mark.cluster


def restarted(cluster: Cluster) -> None:
    """Every process stopped (Redis included, by SIGTERM as `make down` does), then all started again."""
    assert "redis" in cluster.down()
    cluster.up()


def test_with_aof_sessions_and_logouts_survive_a_full_restart(start_cluster: Callable[..., Cluster]) -> None:
    cluster = start_cluster(auth_mode="session", session_store="redis", redis_persistence="aof")
    with client(cluster) as kept, client(cluster) as left:
        new_user(kept)
        new_user(left)
        gone = left.cookies["sid"]
        assert left.post("/api/logout", headers={"X-CSRF-Token": left.cookies["csrf_token"]}).status_code == 204
        restarted(cluster)
        assert {kept.get("/api/me").status_code for _ in range(6)} == {200}
        assert {httpx.get(f"{cluster.public_url}/api/me", cookies={"sid": gone}).status_code for _ in range(3)} == {401}


def test_with_aof_the_denylist_and_refresh_families_survive_a_full_restart(
    start_cluster: Callable[..., Cluster],
) -> None:
    cluster = start_cluster(auth_mode="jwt", jwt_revocation="denylist", redis_persistence="aof")
    with client(cluster) as c:
        _, revoked = new_user(c)
        token = revoked.json()["access_token"]
        assert c.post("/api/logout", headers=bearer(token)).status_code == 204
        _, live = new_user(c)
        refresh = live.json()["refresh_token"]
        restarted(cluster)
        assert {c.get("/api/me", headers=bearer(token)).status_code for _ in range(6)} == {401}  # still revoked
        assert c.post("/api/refresh", json={"refresh_token": refresh}).status_code == 200


def test_without_persistence_a_full_restart_forgets_every_session_and_revocation(
    start_cluster: Callable[..., Cluster],
) -> None:
    cluster = start_cluster(auth_mode="jwt", jwt_revocation="denylist", redis_persistence="none")
    with client(cluster) as c:
        _, revoked = new_user(c)
        token = revoked.json()["access_token"]
        assert c.post("/api/logout", headers=bearer(token)).status_code == 204
        assert c.get("/api/me", headers=bearer(token)).status_code == 401
        restarted(cluster)
        # What `none` promises, and why `aof` is the default: the logout is forgotten with the denylist.
        assert c.get("/api/me", headers=bearer(token)).status_code == 200
