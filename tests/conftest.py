"""Fixtures that start real clusters (nginx, redis-server, uvicorn) on free loopback ports.

Each test module starts its clusters once; every process is stopped by pid when the module ends. A cluster
from `make up` lives in `.cluster/` on the default ports and is never touched: tests use their own
directories and ports.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
from collections.abc import Callable, Iterator

import pytest
from helpers import HOST, RUN_MARKER, cluster_settings, free_ports, leftover_processes, wait_for_port

from scaleout.core.config import Settings
from scaleout.lab.drivers.local import Cluster
from scaleout.lab.processes import require_program
from scaleout.lab.redisadmin import redis_args


def pytest_configure(config: pytest.Config) -> None:
    # Tests choose their own modes and ports: settings from the caller's environment must not leak in.
    for name in Settings.model_fields:
        os.environ.pop(name.upper(), None)
    # Inherited by every process the run starts (directly, through the CLI or the panel): how the end of
    # the run recognises its own leftovers, and only those.
    os.environ[RUN_MARKER] = secrets.token_hex(8)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that asks for its own redis-server is marked so, like the cluster, engine and browser tests."""
    for item in items:
        if "redis_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.redis)


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """The run ends with no process of its own alive: every replica, Redis, nginx and panel a test started
    (directly, through the CLI, or through the panel's restart) was stopped by pid."""
    yield
    left = leftover_processes(os.environ[RUN_MARKER])
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # stop them anyway, so that one failure does not pile up
    assert not left, f"processes left behind by the test run: {left}"


@pytest.fixture(scope="module")
def start_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Cluster]]:
    """Start a cluster with the given settings; all of a module's clusters stop when the module ends."""
    started: list[Cluster] = []

    def start(**overrides: object) -> Cluster:
        cluster = Cluster(cluster_settings(tmp_path_factory.mktemp("cluster"), **overrides))
        started.append(cluster)
        cluster.up()
        return cluster

    yield start
    for cluster in started:
        cluster.down()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server of our own, for the store tests."""
    (port,), _ = free_ports(1)
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [require_program("redis-server"), *redis_args(port), "--bind", HOST, "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"redis://{HOST}:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
