"""The container path for real: the compose stack started, toggled, faulted and driven through its published
127.0.0.1 port only, with the same verbs as `make compose-*` (`scaleout.lab.compose.Stack`).

As root on Debian the engine is found or provided (and stopped afterwards if this module started it); with
CI=true these tests must run. Elsewhere they skip with one line saying why.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import (
    PASSWORD,
    bearer,
    logs_in_after_failover,
    new_session,
    new_username,
    per_shard,
    replicas_of,
    run_cli,
    shard_loss,
    shard_of,
    stack_client,
)

from scaleout.core.config import ROOT, Settings
from scaleout.lab.drivers.compose import Stack
from scaleout.lab.engine import IMAGE_LABEL, ComposeError, Engine, ensure_engine, stop_engine_if_ours
from scaleout.lab.faults import Fault
from scaleout.lab.load import RequestLoop, wait_until
from scaleout.lab.ports import free_ports

pytestmark = [pytest.mark.cluster, pytest.mark.engine]


def _can_have_an_engine() -> str | None:
    if os.geteuid() != 0:
        return "not root: this module provides a Docker engine only as root"
    if not Path("/etc/debian_version").exists() and shutil.which("docker") is None:
        return "not Debian and no docker: no engine to find or install"
    return None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    why = _can_have_an_engine()
    if why is not None:
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(f"the compose tests must run in CI: {why}")
        pytest.skip(why)
    (port,), _ = free_ports("127.0.0.1", 1)
    settings = Settings(cluster_dir=tmp_path_factory.mktemp("compose"), nginx_port=port)
    s = Stack(settings, project=f"scaleout-test-{secrets.token_hex(3)}", say=print)
    engine: Engine | None = None
    images_before: set[str] | None = None
    try:
        engine = ensure_engine(settings)
        images_before = image_ids()
        s.prepare()
        s.up()
        yield s
    finally:
        try:
            s.down()
        except ComposeError as exc:
            print(f"compose down failed: {exc}")
        if images_before is not None:
            # What this module built (the services' images, stand-ins, the base) goes with it.
            for _ in range(3):  # children before their parents: a parent refuses while a child exists
                built = image_ids() - images_before
                if built:
                    subprocess.run(["docker", "rmi", "-f", *built], capture_output=True, timeout=300)
        if engine is not None and engine.started_by_us:
            stop_engine_if_ours(settings)


def image_ids() -> set[str]:
    return set(docker_lines("images", "-aq", "--no-trunc"))


def docker_lines(*args: str) -> list[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60).stdout.split()


def started_directly_in(stack: Stack, mode: str) -> None:
    """Readiness asks nginx itself whether it reaches every replica: through the published port ip_hash
    and sticky show one replica, and `compose-up LB_MODE=ip_hash` once timed out waiting for the others.
    (The topology tests below start the stack directly in these modes.)"""
    assert stack.upstreams_reached() == {"api-1", "api-2", "api-3"}, mode
    with client(stack) as c:
        r = c.get("/api/whoami")
        assert r.status_code == 200 and r.headers["x-lb-mode"] == mode


def restart_in(stack: Stack, **modes: object) -> None:
    stack.settings = stack.settings.model_copy(update=modes)
    stack.up()  # compose recreates the containers whose environment changed


def client(stack: Stack, local_address: str | None = None) -> httpx.Client:
    return stack_client(stack.public_url, local_address)


def test_round_robin_spreads_over_three_replicas_and_redis_sessions_work_everywhere(stack: Stack) -> None:
    with client(stack) as c:
        assert sorted(r for r, _ in replicas_of(c, 9)) == ["api-1"] * 3 + ["api-2"] * 3 + ["api-3"] * 3
        new_session(c)
        seen = replicas_of(c, 9, "/api/me")
        assert {s for _, s in seen} == {200} and {r for r, _ in seen} == {"api-1", "api-2", "api-3"}
        csrf = c.cookies["csrf_token"]
        assert c.post("/api/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
        assert {s for _, s in replicas_of(c, 6, "/api/me")} == {401}


def test_each_container_sees_the_secrets_it_needs_and_no_others(stack: Stack) -> None:
    """A compromised Redis cannot read the session key, a compromised replica cannot sign tokens or read the
    users database: each kind of container mounts a volume of its own with only its files."""

    def seen(service: str) -> set[str]:
        return set(stack._compose("exec", "-T", service, "ls", "-A", "/secrets").split())

    store, replica, auth = seen("redis"), seen("api-1"), seen("auth")
    assert store == {"redis_password", "redis_admin_password", "redis.acl", "redis.conf"}
    assert replica == {"redis_password", "session_key"}
    assert {"redis_password", "session_key", "keys"} <= auth and "users.sqlite3" in auth
    assert not {"redis.acl", "redis_admin_password"} & (auth | replica)
    assert not any(name.startswith("users.sqlite3") for name in replica | store)
    mounts = subprocess.run(
        [
            "docker",
            "inspect",
            "-f",
            "{{range .Mounts}}{{.Name}} {{end}}",
            *docker_lines("ps", "-q", "--filter", f"label=com.docker.compose.project={stack.project}"),
        ],
        capture_output=True,
        text=True,
    ).stdout
    assert f"{stack.project}_secrets " not in mounts  # the master copy stays with the generator, which has exited


def test_the_readmes_plain_docker_compose_up_acts_on_the_same_stack(stack: Stack) -> None:
    """`docker compose up --build -d --wait`, typed as the README shows it (the plugin the project
    provisions), with the stand-in images where the registry cannot serve the official ones: it is the
    stack the verbs act on, it rotates over the replicas, and a rebuild leaves no image of ours dangling."""
    result = subprocess.run(
        ["docker", "compose", "up", "--build", "-d", "--wait"],
        cwd=ROOT,
        # COMPOSE_PROJECT_NAME and NGINX_PORT keep it on this module's stack, off a user's `make compose-up`.
        env={
            **os.environ,
            **stack.env,
            "COMPOSE_PROJECT_NAME": stack.project,
            "NGINX_PORT": str(stack.settings.nginx_port),
            # Another value than the stack runs: compose recreates the replicas (new addresses), and nginx
            # must follow them (it is restarted with them), or it would send everything to one survivor.
            "MAX_SESSIONS_PER_USER": "9",
        },
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with client(stack) as c:
        assert sorted(r for r, _ in replicas_of(c, 6)) == ["api-1", "api-1", "api-2", "api-2", "api-3", "api-3"]
    os.environ["COMPOSE_PROJECT_NAME"] = stack.project
    try:
        attached = Stack.attach(Settings(auth_mode="jwt", lb_mode="sticky"))  # the environment is not the stack
    finally:
        del os.environ["COMPOSE_PROJECT_NAME"]
    assert attached.project == stack.project
    assert (attached.settings.auth_mode, attached.settings.lb_mode) == ("session", "round_robin")
    assert attached.settings.nginx_port == stack.settings.nginx_port
    stack.up()  # a second build, then the verbs' prune
    dangling = docker_lines("images", "-q", "--no-trunc", "-f", "dangling=true", "-f", f"label={IMAGE_LABEL}")
    in_use = docker_lines("ps", "-a", "-q", "--no-trunc")
    used = set(docker_lines("inspect", "-f", "{{.Image}}", *in_use)) if in_use else set()
    assert set(dangling) <= used  # an old image stays only while a container still runs it


def test_redis_stopped_gives_503_only_and_back_it_heals(stack: Stack) -> None:
    with client(stack) as c:
        new_session(c)
        stack.stop("redis")
        try:
            assert {s for _, s in replicas_of(c, 9, "/api/me")} == {503}
        finally:
            stack.start("redis")
        assert wait_until(lambda: c.get("/api/me").status_code != 503, 20)
        # REDIS_PERSISTENCE=aof (the default): the container was killed, and the session it acknowledged was
        # already in the append-only file (Redis writes it before it replies).
        assert c.get("/api/me").status_code == 200
        new_session(c)
        assert {s for _, s in replicas_of(c, 9, "/api/me")} == {200}


def test_a_slow_or_silent_store_and_auth_through_the_stacks_fault_proxies(stack: Stack) -> None:
    """`scaleout compose fault`: the stack routes Redis and the auth service through its fault proxies, so
    latency is paid within the budget, silence is a bounded 503 with Retry-After, and 200 is back within a
    second of the fault clearing, with no container restarted."""
    env = {"COMPOSE_PROJECT_NAME": stack.project}
    s = stack.settings
    wrong = run_cli("compose", "fault", "redis", "latency", env=env)
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    with client(stack) as c:
        new_session(c)
        try:
            done = run_cli("compose", "fault", "redis", "latency", "200ms", env=env)
            assert done.returncode == 0 and "latency 200ms" in done.stdout, done.stdout + done.stderr
            assert "fault between the services and redis: latency 200ms" in run_cli("compose", "status", env=env).stdout
            for _ in range(3):  # every replica: each pays the latency and still answers
                started = time.monotonic()
                r = c.get("/api/me")
                assert r.status_code == 200 and 0.2 <= time.monotonic() - started < s.redis_timeout + 0.5
            stack.fault("redis", "blackhole")
            for _ in range(3):
                started = time.monotonic()
                r = c.get("/api/me")
                assert r.status_code == 503 and r.headers.get("retry-after"), r.text
                assert time.monotonic() - started < s.redis_timeout + 1.0
        finally:
            stack.fault("redis", "clear")
        cleared = time.monotonic()
        assert wait_until(lambda: [c.get("/api/me").status_code for _ in range(3)] == [200] * 3, 10, 0.02)
        assert time.monotonic() - cleared < 1.0
        try:
            stack.fault("auth", "blackhole")
            started = time.monotonic()
            r = c.post("/api/login", json={"username": new_username("c"), "password": PASSWORD})
            assert r.status_code == 503 and r.headers.get("retry-after"), r.text
            assert time.monotonic() - started < s.auth_timeout + 1.0
        finally:
            stack.fault("auth", "clear")
    assert stack.faults() == {"redis": Fault(), "auth": Fault()}


def test_a_live_balancer_switch_and_a_killed_replica_lose_no_get(stack: Stack) -> None:
    failures: list[str] = []
    with client(stack) as keepalive:

        def keepalive_get() -> httpx.Response:
            try:
                return keepalive.get("/api/whoami")
            except httpx.RemoteProtocolError:
                # A retiring nginx worker closed this idle keep-alive connection as the request went out:
                # like browsers (RFC 9112 9.3.1), retry an idempotent request once on a new connection.
                return keepalive.get("/api/whoami")

        def get(worker: int, n: int) -> int:
            try:
                r = keepalive_get() if worker else httpx.get(f"{stack.public_url}/api/whoami", timeout=10)
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
                return 599
            if r.status_code != 200:
                failures.append(str(r.status_code))
            return r.status_code

        with RequestLoop(get, workers=2) as loop:
            assert wait_until(lambda: len(loop.outcomes) >= 20, 20)
            stack.lb("sticky")
            stack.lb("round_robin")
            stack.stop("api-2")
            assert wait_until(lambda: len(loop.outcomes) >= 200, 30)
        stack.start("api-2")
    assert failures == [], failures[:5]
    assert len(loop.outcomes) >= 200


def test_memory_sessions_hit_the_wall_and_sticky_pins_and_a_dead_replica_means_401(stack: Stack) -> None:
    restart_in(stack, session_store="memory", lb_mode="round_robin")
    with client(stack) as c:
        new_session(c)
        ok = sum(s == 200 for _, s in replicas_of(c, 30, "/api/me"))
        assert 5 <= ok <= 15  # about one in three
    stack.lb("sticky")
    homes = {}
    people = [client(stack) for _ in range(6)]
    for i, p in enumerate(people):
        new_session(p)
        seen = replicas_of(p, 6, "/api/me")
        assert {s for _, s in seen} == {200} and len({r for r, _ in seen}) == 1
        homes[i] = seen[0][0]
    victim = max(set(homes.values()), key=list(homes.values()).count)
    stack.stop(victim)
    try:
        for i, p in enumerate(people):
            statuses = {s for _, s in replicas_of(p, 3, "/api/me")}
            assert statuses == ({401} if homes[i] == victim else {200}), (i, homes[i], statuses)
    finally:
        stack.start(victim)
        for p in people:
            p.close()


def test_ip_hash_behind_port_publishing_sees_one_client_address(stack: Stack) -> None:
    """Clients on the host reach nginx through Docker's published port: nginx sees the proxy's address
    for all of them, so ip_hash puts every host client on one replica (the README says so)."""
    stack.lb("ip_hash")
    try:
        landed = set()
        for i in range(1, 7):
            with client(stack, local_address=f"127.0.{i}.2") as c:
                landed |= {r for r, _ in replicas_of(c, 3)}
        assert len(landed) == 1
    finally:
        stack.lb("round_robin")


def test_the_near_cache_in_containers_serves_reads_and_a_logout_reaches_every_replica(stack: Stack) -> None:
    restart_in(stack, auth_mode="session", session_store="redis", lb_mode="round_robin", session_cache="tracking")
    with client(stack) as c:
        assert {c.get("/api/whoami").json()["session_cache"] for _ in range(3)} == {"tracking"}
        new_session(c)
        for _ in range(9):  # every replica renews once, then reads into its cache
            assert c.get("/api/me").status_code == 200
        clients = stack.redis_cli("redis", "CLIENT", "LIST")
        tracking = [line for line in clients.splitlines() if " flags=t" in line]
        assert len(tracking) == 3, clients  # each replica's read connection, tracked
        gets = stack.redis_cli("redis", "INFO", "commandstats")
        seen = replicas_of(c, 30, "/api/me")
        assert {s for _, s in seen} == {200} and {r for r, _ in seen} == {"api-1", "api-2", "api-3"}
        # Served from the replicas' memory: Redis answered not one more GET.
        assert _calls(stack.redis_cli("redis", "INFO", "commandstats"), "get") == _calls(gets, "get")
        sid = c.cookies["sid"]
        assert c.post("/api/logout", headers={"X-CSRF-Token": c.cookies["csrf_token"]}).status_code == 204
        with httpx.Client(base_url=stack.public_url, cookies={"sid": sid}) as replay:
            assert set(replicas_of(replay, 6, "/api/me")) == {("api-1", 401), ("api-2", 401), ("api-3", 401)}


def _calls(commandstats: str, command: str) -> int:
    for line in commandstats.splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=", 1)[1].split(",", 1)[0])
    return 0


def test_jwt_works_everywhere_with_redis_and_auth_stopped(stack: Stack) -> None:
    # HS256 with a secret handed in: it reaches the secrets generator alone, never a running container's env.
    secret = base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()
    restart_in(
        stack,
        auth_mode="jwt",
        session_store="redis",
        session_cache="off",
        lb_mode="round_robin",
        jwt_alg="HS256",
        jwt_secret=secret,
    )
    running = docker_lines("ps", "-q", "--filter", f"label=com.docker.compose.project={stack.project}")
    environments = subprocess.run(
        ["docker", "inspect", "-f", "{{json .Config.Env}}", *running], capture_output=True, text=True
    ).stdout
    assert len(running) >= 5 and secret not in environments and "JWT_SECRET=" not in environments
    with client(stack) as c:
        token = new_session(c)["access_token"]
        stack.stop("redis")
        stack.stop("auth")
        try:
            seen = replicas_of(c, 9, "/api/me", headers=bearer(token))
            assert {s for _, s in seen} == {200} and {r for r, _ in seen} == {"api-1", "api-2", "api-3"}
        finally:
            stack.start("redis")
            stack.start("auth")
        assert c.post("/api/logout", headers=bearer(token)).status_code == 204
        # JWT_REVOCATION=none: logout ends the refresh family, the access token lives to `exp`.
        assert {s for _, s in replicas_of(c, 3, "/api/me", headers=bearer(token))} == {200}


SECRET_FILES = ("redis_password", "redis_admin_password")


def passwords_in_command_lines(passwords: list[str], seconds: float) -> dict[int, str]:
    """Every process on the host whose command line held one of `passwords`, sampled for `seconds` (a
    health check's `redis-cli` lives for milliseconds: sample /proc as fast as it reads)."""
    found: dict[int, str] = {}
    needles = [p.encode() for p in passwords]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    argv = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if any(n in argv for n in needles):
                    found[int(entry.name)] = argv.replace(b"\0", b" ").decode(errors="replace")[:80]
    return found


def test_the_sentinel_override_fails_over_and_what_was_acknowledged_survives(stack: Stack) -> None:
    """docker-compose.sentinel.yml on the running stack: the primary's container is killed under a GET loop;
    the Sentinels promote a replica, every replica follows it, sessions and a logout acknowledged before
    the kill hold after it, and the killed Redis comes back as a replica. The module's last test: its stack
    goes down after it, in the Sentinel topology or the next (no restart back to one Redis)."""
    restart_in(stack, auth_mode="session", session_store="redis", lb_mode="sticky", redis_topology="sentinel")
    started_directly_in(stack, "sticky")
    passwords = [stack._compose("exec", "-T", "redis", "cat", f"/secrets/{f}").strip() for f in SECRET_FILES]
    assert all(len(p) >= 32 for p in passwords)
    # Six containers run a health check every 2 s: none may show a password to `ps` (argv), ever.
    seen_in_argv = passwords_in_command_lines(passwords, seconds=6)
    assert not seen_in_argv, seen_in_argv
    assert stack.primary() == "redis"
    assert [stack.role(r) for r in ("redis", "redis-2", "redis-3")] == ["master", "slave", "slave"]
    with client(stack) as c, client(stack) as gone:
        new_session(c)
        new_session(gone)
        sid = gone.cookies["sid"]
        assert gone.post("/api/logout", headers={"X-CSRF-Token": gone.cookies["csrf_token"]}).status_code == 204

        def me(worker: int, n: int) -> int:
            try:
                return c.get("/api/me").status_code
            except httpx.HTTPError:
                return 599

        with RequestLoop(me, workers=1) as loop:
            assert wait_until(lambda: len(loop.outcomes) >= 20, 10)
            killed_at = time.monotonic()
            assert stack.stop("redis") == "redis"  # `redis` names the primary: its container is killed
            assert wait_until(lambda: stack.primary() not in (None, "redis"), 30)
            assert wait_until(lambda: loop.values()[-10:] == [200] * 10, 30)
        seen = set(loop.values())
        assert seen <= {200, 503}, seen  # never 401 for a good session, never 500
        assert 503 in seen  # the outage was seen, and answered 503
        failures = [o.started for o in loop.outcomes if o.started >= killed_at and o.value != 200]
        recovered = max(failures, default=killed_at) - killed_at
        print(f"compose failover: 200 again {recovered:.2f} s after the primary's container was killed")
        assert recovered < 10, recovered
        assert {s for _, s in replicas_of(c, 6, "/api/me")} == {200}
        with httpx.Client(base_url=stack.public_url, timeout=10.0) as thief:
            thief.cookies.set("sid", sid)
            assert {thief.get("/api/me").status_code for _ in range(6)} == {401}  # the logout still holds
        # New logins work after the failover (503 for a moment while the other replica follows).
        name = c.get("/api/me").json()["username"]
        logs_in_after_failover(c, name, 20)
    new_primary = stack.primary()
    # A later command, with nothing typed about the topology, acts on the stack as it runs.
    later = Stack.attach(Settings(cluster_dir=stack.settings.cluster_dir), project=stack.project)
    assert later.settings.redis_topology == "sentinel"
    assert later.primary() == new_primary
    assert stack.start("redis") == "redis"  # the stopped one
    assert wait_until(lambda: stack.role("redis") == "slave", 30)
    assert stack.primary() == new_primary
    # The Sentinels rewrote their configs after the failover; each still holds the passwords owner-only.
    for sentinel in ("sentinel-1", "sentinel-2", "sentinel-3"):
        mode = stack._compose("exec", "-T", sentinel, "stat", "-c", "%a", "/tmp/sentinel.conf").strip()
        rewritten = stack._compose("exec", "-T", sentinel, "grep", "-c", "known-sentinel", "/tmp/sentinel.conf")
        assert (mode, int(rewritten) > 0) == ("600", True), sentinel


def test_the_cluster_override_shards_sessions_and_a_killed_primary_costs_only_its_shard(stack: Stack) -> None:
    """docker-compose.cluster.yml: six nodes formed into three shards by the stack itself; sessions on every
    shard; one shard's primary container killed under a GET loop costs only that shard's users a 503, for
    less than 5 s, and loses nothing acknowledged; the killed node comes back as its shard's replica. The
    module's last test: its stack goes down after it, in this topology."""
    restart_in(stack, auth_mode="session", session_store="redis", lb_mode="ip_hash", redis_topology="cluster")
    started_directly_in(stack, "ip_hash")
    later = Stack.attach(Settings(cluster_dir=stack.settings.cluster_dir), project=stack.project)
    assert later.settings.redis_topology == "cluster"  # a later verb acts on the stack as it runs
    shards = stack.shards()
    assert [s.number for s in shards] == [1, 2, 3] and all(len(s.replicas) == 1 for s in shards), shards
    people = []
    for _ in range(30):  # (2/3)^30 x 3: the chance that one shard gets no session at all
        c = client(stack)
        new_session(c)
        people.append(c)
    shard = {id(c): shard_of(shards, c.cookies["sid"]).number for c in people}
    assert set(shard.values()) == {1, 2, 3}
    assert {s for c in people[:3] for _, s in replicas_of(c, 3, "/api/me")} == {200}
    victim = shards[1].primary
    loopers = [client(stack) for _ in range(2)]

    with RequestLoop(per_shard(people, loopers, shard), workers=2) as loop:
        assert wait_until(lambda: len(loop.outcomes) >= 40, 10)
        killed_at = time.monotonic()
        assert stack.stop("redis-shard-2") == victim  # the shard's primary: its container is killed
        assert wait_until(lambda: any(s.number == 2 and s.primary != victim for s in stack.shards()), 30)
        assert wait_until(lambda: [v for _, v in loop.values()[-20:]] == [200] * 20, 20)
    others, failed = shard_loss(loop, killed_at, 2)
    assert others == {200: sum(others.values())} and others[200] > 20, others
    # The outage as the shard's users saw it: from the first 503 to the last (the verb's own lookup of the
    # shard's primary, before the kill, is not part of it).
    window = (max(failed) - min(failed)) if failed else 0.0
    print(f"compose cluster: shard 2's primary killed, {len(failed)} of its users' GETs 503 for {window:.2f} s")
    assert failed and window < 5.0, window
    for c in people:
        assert {s for _, s in replicas_of(c, 3, "/api/me")} == {200}  # nothing acknowledged was lost
    assert stack.start("redis-shard-2") == victim  # the stopped node
    assert wait_until(lambda: victim in next(s for s in stack.shards() if s.number == 2).replicas, 30)
    for c in [*people, *loopers]:
        c.close()
