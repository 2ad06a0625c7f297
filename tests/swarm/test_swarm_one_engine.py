"""The Swarm stack for real, on this engine: `docker stack deploy` of deploy/swarm/stack.yml with the same verbs
as `make swarm-*` (`scaleout.lab.drivers.swarm.Swarm`), driven through nginx's published port only.

A swarm is initialised when the engine is in none and left again at the end (one that was there is left
alone); the stack, its secrets, its volume and the images this module built go with it. As root on Debian
the engine is found or provided; with CI=true these tests must run.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import bearer, new_session, replicas_of, run_cli, stack_client

from scaleout.core.config import Settings
from scaleout.lab.drivers.swarm import Swarm
from scaleout.lab.engine import ComposeError
from scaleout.lab.load import RequestLoop, wait_until
from scaleout.lab.ports import free_ports

pytestmark = [pytest.mark.cluster, pytest.mark.engine]


@pytest.fixture(scope="module")
def swarm(engine: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    (port,), _ = free_ports("127.0.0.1", 1)
    settings = Settings(cluster_dir=tmp_path_factory.mktemp("swarm"), nginx_port=port)
    s = Swarm(settings, stack=f"sotest{secrets.token_hex(3)}", say=print)
    try:
        s.up()
        yield s
    finally:
        try:
            s.down()
        except ComposeError as exc:
            print(f"swarm down failed: {exc}")


def client(swarm: Swarm, local_address: str | None = None) -> httpx.Client:
    return stack_client(swarm.public_url, local_address)


def test_round_robin_over_three_tasks_and_redis_sessions_on_every_replica(swarm: Swarm) -> None:
    with client(swarm) as c:
        seen = [c.get("/api/whoami") for _ in range(9)]
        assert sorted(r.headers["x-replica"] for r in seen) == ["api-1"] * 3 + ["api-2"] * 3 + ["api-3"] * 3
        assert all(r.headers.get("x-node") for r in seen)  # which node the task runs on
        new_session(c)
        me = replicas_of(c, 9, "/api/me")
        assert {s for _, s in me} == {200} and {r for r, _ in me} == {"api-1", "api-2", "api-3"}
        assert c.post("/api/logout", headers={"X-CSRF-Token": c.cookies["csrf_token"]}).status_code == 204
        assert {s for _, s in replicas_of(c, 6, "/api/me")} == {401}
    status = run_cli(
        "swarm", "status", env={"CLUSTER_DIR": str(swarm.settings.cluster_dir), "SWARM_STACK": swarm.stack}
    )
    assert status.returncode == 0, status.stdout + status.stderr
    rows = [line for line in status.stdout.splitlines() if line.startswith("| api-")]
    assert len(rows) == 3 and all("| yes |" in r for r in rows), status.stdout
    assert f"url=http://127.0.0.1:{swarm.settings.nginx_port}" in status.stdout


def test_each_service_gets_only_the_secrets_it_needs_and_none_in_its_environment(swarm: Swarm) -> None:
    wanted = {
        "redis": {"redis_password", "redis_admin_password", "redis.acl", "redis.conf"},
        "auth": {"redis_password", "session_key"},
        "api": {"redis_password", "session_key"},
        "nginx": set(),
    }
    values = [p.read_text().strip() for p in (swarm.state_dir / "secrets").iterdir() if p.is_file()]
    for service, files in wanted.items():
        spec = json.loads(
            subprocess.run(
                ["docker", "service", "inspect", f"{swarm.stack}_{service}"], capture_output=True, text=True
            ).stdout
        )[0]["Spec"]["TaskTemplate"]["ContainerSpec"]
        mounted = spec.get("Secrets") or []
        assert {m["File"]["Name"] for m in mounted} == files, service
        assert all(m["File"]["Mode"] == 0o400 and m["File"]["UID"] == "10001" for m in mounted), service
        env = "\n".join(spec.get("Env", []))
        assert not any(v and v in env for v in values), service
    assert oct((swarm.state_dir / "secrets").stat().st_mode & 0o777) == "0o700"


def test_sticky_pins_a_user_and_ip_hash_sees_one_published_address(swarm: Swarm) -> None:
    swarm.lb("sticky")
    try:
        homes = set()
        for _ in range(4):
            with client(swarm) as c:
                new_session(c)
                me = replicas_of(c, 6, "/api/me")
                assert {s for _, s in me} == {200} and len({r for r, _ in me}) == 1, me
                assert c.cookies["lb_route"] == me[0][0]
                homes.add(me[0][0])
        swarm.lb("ip_hash")
        landed = set()
        for i in range(1, 7):
            with client(swarm, local_address=f"127.0.{i}.2") as c:
                landed |= {r for r, _ in replicas_of(c, 3)}
        # Published in host mode, the port reaches nginx through the engine's proxy: one client address.
        assert len(landed) == 1, landed
    finally:
        swarm.lb("round_robin")


def test_scaling_3_5_2_and_a_killed_task_under_a_get_loop_lose_no_request(swarm: Swarm) -> None:
    failures: list[str] = []
    with client(swarm) as user:
        new_session(user)

        def keepalive_get() -> httpx.Response:
            try:
                return user.get("/api/me")
            except httpx.RemoteProtocolError:
                # nginx reloads as the replicas change: a retiring worker closes an idle keep-alive connection
                # as the request goes out. Like browsers (RFC 9112 9.3.1), an idempotent request is retried once.
                return user.get("/api/me")

        def get(worker: int, n: int) -> str:
            try:
                r = keepalive_get() if worker == 0 else httpx.get(f"{swarm.public_url}/api/whoami", timeout=10)
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
                return "error"
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text[:80]}")
            return r.headers.get("x-replica", "-")

        with RequestLoop(get, workers=2) as loop:
            assert wait_until(lambda: len(loop.outcomes) >= 20, 20)
            swarm.scale(5)
            mark = len(loop.outcomes)
            assert wait_until(lambda: {"api-4", "api-5"} <= set(loop.values()[mark:]), 20)
            swarm.scale(2)
            before = {n: a for n, a in swarm.view()["replicas"]}
            swarm.stop("api-2")  # the Swarm starts another task in slot 2; nginx follows it
            assert wait_until(
                lambda: dict(swarm.view().get("replicas", [])).get("api-2") not in (None, before["api-2"]), 60
            )
            swarm.wait_ready()
            mark = len(loop.outcomes)
            assert wait_until(lambda: "api-2" in loop.values()[mark:], 20)
            swarm.scale(3)
    assert failures == [], failures[:5]
    assert len(loop.outcomes) >= 100


def test_jwt_works_on_every_replica_with_redis_and_auth_stopped(swarm: Swarm) -> None:
    swarm.settings = swarm.settings.model_copy(update={"auth_mode": "jwt"})
    swarm.up()  # redeploys: the services whose spec changed are updated in place
    with client(swarm) as c:
        token = new_session(c)["access_token"]
        swarm.stop("redis")
        swarm.stop("auth")
        try:
            seen = replicas_of(c, 9, "/api/me", headers=bearer(token))
            assert {s for _, s in seen} == {200} and {r for r, _ in seen} == {"api-1", "api-2", "api-3"}
        finally:
            swarm.start("redis")
            swarm.start("auth")
        assert c.post("/api/logout", headers=bearer(token)).status_code == 204
