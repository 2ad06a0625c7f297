"""One engine for the whole Swarm run: found or provided once, and left as it was found at the end (its swarm
membership, its images, stopped if this run started it). Each module deploys its own stack on it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from scaleout.core.config import Settings
from scaleout.lab.engine import ensure_engine, stop_engine_if_ours


def swarm_state() -> str:
    return subprocess.run(
        ["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"], capture_output=True, text=True, timeout=30
    ).stdout.strip()


def image_ids() -> set[str]:
    out = subprocess.run(["docker", "images", "-aq", "--no-trunc"], capture_output=True, text=True, timeout=60)
    return set(out.stdout.split())


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory for the run's engine records; the engine answers while the run lasts."""
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail("the swarm tests must run in CI: not root, and only root can have an engine set up here")
        pytest.skip("not root: the swarm tests provide a Docker engine only as root")
    workdir = tmp_path_factory.mktemp("engine")
    settings = Settings(cluster_dir=workdir)
    started = ensure_engine(settings).started_by_us
    before, images_before = swarm_state(), image_ids()
    try:
        yield workdir
    finally:
        after = swarm_state()
        for _ in range(3):  # what the run built (the services' images, stand-ins, the node image), children first
            built = image_ids() - images_before
            if built:
                subprocess.run(["docker", "rmi", "-f", *built], capture_output=True, timeout=300)
        if started:
            stop_engine_if_ours(settings)
        assert after == before, f"the engine's swarm membership was {before!r} before the run, {after!r} after"
