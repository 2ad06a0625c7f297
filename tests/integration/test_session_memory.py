"""session / memory: one cluster, switched live through round_robin, sticky and ip_hash.

The contract's first row: sessions kept in one replica's memory are unknown to the others, and only a
balancer that pins users (by cookie or by address) hides that.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import httpx
import pytest
from helpers import client, login, new_user, spread

from scaleout.core.config import LBMode
from scaleout.lab.drivers.local import Cluster

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(start_cluster) -> Cluster:
    return start_cluster(auth_mode="session", session_store="memory", lb_mode="round_robin")


@pytest.fixture
def lb(cluster: Cluster):
    def switch(mode: str) -> None:
        cluster.lb(LBMode(mode))

    return switch


def test_round_robin_spreads_requests_evenly(cluster: Cluster, lb) -> None:
    lb("round_robin")
    with client(cluster) as c:
        responses = [c.get("/api/whoami") for _ in range(30)]
    replicas = Counter(r.json()["replica"] for r in responses)
    tried = [r.headers["x-upstream-addr"] for r in responses]
    assert replicas == {"api-1": 10, "api-2": 10, "api-3": 10}, " ".join(tried)


def test_round_robin_session_lives_only_on_the_replica_that_logged_in(cluster: Cluster, lb) -> None:
    lb("round_robin")
    with client(cluster) as c:
        _, login = new_user(c)
        owner = login.headers["x-replica"]
        responses = [c.get("/api/me") for _ in range(30)]
    counts = spread(responses)
    assert counts[(owner, 200)] == 10
    others = [r for r in responses if r.headers["x-replica"] != owner]
    assert len(others) == 20
    assert all(r.status_code == 401 for r in others)
    assert all(r.headers["www-authenticate"] for r in others)


def test_sticky_pins_each_user_and_spreads_users(cluster: Cluster, lb) -> None:
    lb("sticky")
    with client(cluster) as c:
        new_user(c)
        assert "lb_route" in c.cookies
        responses = [c.get("/api/me") for _ in range(30)]
    assert {r.status_code for r in responses} == {200}
    assert len({r.headers["x-replica"] for r in responses}) == 1

    homes = Counter()
    for _ in range(9):
        with client(cluster) as c:
            new_user(c)
            homes[c.get("/api/me").headers["x-replica"]] += 1
    assert set(homes) == {"api-1", "api-2", "api-3"}


def test_sticky_user_whose_replica_dies_must_log_in_again_others_untouched(cluster: Cluster, lb) -> None:
    lb("sticky")
    users: dict[str, list[tuple[str, httpx.Client]]] = defaultdict(list)
    clients = []
    for _ in range(6):
        c = client(cluster)
        clients.append(c)
        name, _ = new_user(c)
        r = c.get("/api/me")
        assert r.status_code == 200
        users[r.headers["x-replica"]].append((name, c))
    assert len(users) == 3  # round-robin logins spread six users over all replicas
    victim = "api-2"
    try:
        cluster.stop(victim)
        for _, c in users[victim]:
            r = c.get("/api/me")
            # Moved to a backup replica (not a 502), which never saw the session.
            assert r.status_code == 401, r.text
            assert r.headers["x-replica"] != victim
        for replica, pinned in users.items():
            if replica != victim:
                for _, c in pinned:
                    assert [c.get("/api/me").status_code for _ in range(5)] == [200] * 5
        # Logging in again pins the user to a live replica, and the session works there.
        name, c = users[victim][0]
        login(c, name)
        after = [c.get("/api/me") for _ in range(5)]
        assert {r.status_code for r in after} == {200}
        assert len({r.headers["x-replica"] for r in after}) == 1
    finally:
        cluster.start(victim)
        for c in clients:
            c.close()


def test_ip_hash_spreads_networks_but_pins_a_whole_slash_24(cluster: Cluster, lb) -> None:
    lb("ip_hash")
    per_network: dict[str, str] = {}
    for net in range(1, 21):
        with client(cluster, local_address=f"127.0.{net}.2") as c:
            _, login = new_user(c)
            responses = [c.get("/api/me") for _ in range(6)]
            assert {r.status_code for r in responses} == {200}
            assert {r.headers["x-replica"] for r in responses} == {login.headers["x-replica"]}
            per_network[f"127.0.{net}"] = login.headers["x-replica"]
    assert len(set(per_network.values())) >= 2

    # Twenty clients behind one /24 (one NAT): all on one replica.
    one_net = {client_replica(cluster, f"127.0.42.{host}") for host in range(2, 22)}
    assert len(one_net) == 1


def client_replica(cluster: Cluster, address: str) -> str:
    with client(cluster, local_address=address) as c:
        return c.get("/api/whoami").json()["replica"]
