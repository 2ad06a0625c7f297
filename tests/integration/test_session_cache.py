"""SESSION_CACHE=tracking on a real cluster: the replicas answer from their near-caches, Redis keeps them in
step, and a revocation is refused by every replica as soon as it returns (also with the replicas' streams
killed under them)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from helpers import PASSWORD, bearer, client, cluster_redis, new_user, run_cli, spread

from scaleout.lab.drivers.local import Cluster

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(start_cluster: Callable[..., Cluster]) -> Cluster:
    return start_cluster(auth_mode="session", session_store="redis", session_cache="tracking")


def near_cache(cluster: Cluster) -> dict[str, float]:
    """The replicas' near-cache counters, summed."""
    out: dict[str, float] = {}
    for name in cluster.settings.replica_names:
        for line in httpx.get(f"http://{cluster.services[name].address}/metrics").text.splitlines():
            if line.startswith("scaleout_near_cache_") and not line.startswith("#"):
                metric, value = line.split()
                out[metric] = out.get(metric, 0.0) + float(value)
    return out


def gets(cluster: Cluster) -> int:
    return int(cluster_redis(cluster).info("commandstats").get("cmdstat_get", {}).get("calls", 0))


def logout_and_replay(c: httpx.Client) -> dict[tuple[str, int], int]:
    sid = c.cookies["sid"]
    assert c.post("/api/logout", headers={"X-CSRF-Token": c.cookies["csrf_token"]}).status_code == 204
    with httpx.Client(base_url=str(c.base_url), cookies={"sid": sid}) as replay:
        return dict(spread([replay.get("/api/me") for _ in range(6)]))


def test_the_mode_shows_and_reads_are_served_from_the_replicas_memory(cluster: Cluster) -> None:
    status = run_cli("status", env={"CLUSTER_DIR": str(cluster.dir)})
    assert "SESSION_CACHE=tracking" in status.stdout, status.stdout
    with client(cluster) as c:
        new_user(c)
        assert {c.get("/api/whoami").json()["session_cache"] for _ in range(3)} == {"tracking"}
        for _ in range(9):  # every replica renews, then reads once into its cache
            assert c.get("/api/me").status_code == 200
        before, redis_gets = near_cache(cluster), gets(cluster)
        served = spread([c.get("/api/me") for _ in range(90)])
        assert served == {("api-1", 200): 30, ("api-2", 200): 30, ("api-3", 200): 30}
        after = near_cache(cluster)
    assert after["scaleout_near_cache_hits_total"] - before["scaleout_near_cache_hits_total"] == 90
    assert gets(cluster) == redis_gets  # not one of them asked Redis


def test_a_logout_is_refused_by_every_replica_as_soon_as_it_returns(cluster: Cluster) -> None:
    with client(cluster) as c:
        for _ in range(20):
            new_user(c)
            for _ in range(9):
                assert c.get("/api/me").status_code == 200
            assert logout_and_replay(c) == {("api-1", 401): 2, ("api-2", 401): 2, ("api-3", 401): 2}


def test_streams_killed_under_the_replicas_empty_their_caches_before_a_logout(cluster: Cluster) -> None:
    with client(cluster) as c:
        new_user(c)
        for _ in range(9):
            assert c.get("/api/me").status_code == 200
        admin = cluster_redis(cluster)
        tracking = [x for x in admin.client_list() if "t" in x["flags"]]
        assert len(tracking) == cluster.settings.replicas, tracking
        for x in tracking:
            admin.client_kill_filter(_id=x["id"])
        flushes = near_cache(cluster)["scaleout_near_cache_flushes_total"]
        assert logout_and_replay(c) == {("api-1", 401): 2, ("api-2", 401): 2, ("api-3", 401): 2}
        assert near_cache(cluster)["scaleout_near_cache_flushes_total"] >= flushes
        new_user(c)  # and the replicas' streams came back, caching again
        for _ in range(9):
            assert c.get("/api/me").status_code == 200
        assert len([x for x in admin.client_list() if "t" in x["flags"]]) == cluster.settings.replicas


def test_jwt_with_the_denylist_and_the_cache(start_cluster: Callable[..., Cluster]) -> None:
    jwt = start_cluster(auth_mode="jwt", jwt_revocation="denylist", session_cache="tracking")
    with client(jwt) as c:
        _, r = new_user(c)
        token = r.json()["access_token"]
        for _ in range(9):
            assert c.get("/api/me", headers=bearer(token)).status_code == 200
        hits = near_cache(jwt)["scaleout_near_cache_hits_total"]
        assert {c.get("/api/me", headers=bearer(token)).status_code for _ in range(6)} == {200}
        assert near_cache(jwt)["scaleout_near_cache_hits_total"] - hits == 6  # "not denied", from memory
        assert c.post("/api/logout", headers=bearer(token)).status_code == 204
        assert spread([c.get("/api/me", headers=bearer(token)) for _ in range(6)]) == {
            ("api-1", 401): 2,
            ("api-2", 401): 2,
            ("api-3", 401): 2,
        }


def test_every_kind_of_revocation_reaches_every_replicas_cache(cluster: Cluster) -> None:
    """A session ended by id from another device, logout-all and account deletion: each refused by every
    replica as soon as it returns, though every replica had the session in its near-cache."""

    def warm(*clients: httpx.Client) -> None:
        for c in clients:
            for _ in range(9):
                assert c.get("/api/me").status_code == 200

    def refused(sid: str) -> dict[tuple[str, int], int]:
        with httpx.Client(base_url=cluster.settings.public_url, cookies={"sid": sid}) as replay:
            return dict(spread([replay.get("/api/me") for _ in range(6)]))

    everywhere = {("api-1", 401): 2, ("api-2", 401): 2, ("api-3", 401): 2}
    with client(cluster) as phone, client(cluster) as laptop:
        name, _ = new_user(phone)
        laptop.post("/api/login", json={"username": name, "password": PASSWORD})
        warm(phone, laptop)
        listed = phone.get("/api/sessions").json()["sessions"]
        other = next(x["id"] for x in listed if not x["current"])
        csrf = {"X-CSRF-Token": phone.cookies["csrf_token"]}
        assert phone.delete(f"/api/sessions/{other}", headers=csrf).status_code == 204
        assert refused(laptop.cookies["sid"]) == everywhere
        laptop.post("/api/login", json={"username": name, "password": PASSWORD})
        warm(phone, laptop)
        sids = [laptop.cookies["sid"], phone.cookies["sid"]]  # the phone's cookie is cleared by the answer
        assert phone.post("/api/logout-all", headers=csrf).status_code == 204
        assert [refused(sid) for sid in sids] == [everywhere, everywhere]
        phone.post("/api/login", json={"username": name, "password": PASSWORD})
        warm(phone)
        sid = phone.cookies["sid"]
        gone = phone.request(
            "DELETE", "/api/me", json={"password": PASSWORD}, headers={"X-CSRF-Token": phone.cookies["csrf_token"]}
        )
        assert gone.status_code == 204
        assert refused(sid) == everywhere
