"""The API keeps the promises of its own OpenAPI document: schemathesis' CLI over the live
`/api/openapi.json`, through nginx, in session and jwt modes, authenticated (`schemathesis_hooks.py`),
with every check, a fixed seed and a small example budget. A failure prints schemathesis' own report,
with a curl command that reproduces each finding. Its caches are written outside the work tree.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from helpers import PASSWORD, new_username

from scaleout.lab.drivers.local import Cluster

pytestmark = pytest.mark.cluster

MODES = {
    "session": {"auth_mode": "session", "session_store": "redis"},
    "jwt": {"auth_mode": "jwt", "session_store": "redis", "jwt_revocation": "denylist"},
}
SEED = 20261130
EXAMPLES = 20


@pytest.mark.parametrize("mode", list(MODES))
def test_every_operation_keeps_its_documented_promises(
    mode: str, start_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    # nginx limits registrations and logins per address, and the auth service failed passwords per account
    # (account deletion with a wrong one counts): the fuzzer sends everything from one address, as one user.
    limits = {
        "register_rate_per_minute": 100_000,
        "register_burst": 10_000,
        "login_rate": 10_000,
        "login_burst": 10_000,
        "throttle_account_max": 100_000,
    }
    cluster = start_cluster(**MODES[mode], **limits)
    url = cluster.settings.public_url
    users = [new_username("reader"), new_username("writer")]
    for user in users:
        assert httpx.post(f"{url}/api/register", json={"username": user, "password": PASSWORD}).status_code == 201
    here = Path(__file__).parent
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")]),
        "CONTRACT_URL": url,
        "CONTRACT_MODE": mode,
        "CONTRACT_USERS": ",".join(users),
        "CONTRACT_PASSWORD": PASSWORD,
    }
    started = time.monotonic()
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file",
            str(here / "schemathesis.toml"),
            "run",
            f"{url}/api/openapi.json",
            "--checks",
            "all",
            "--seed",
            str(SEED),
            "--max-examples",
            str(EXAMPLES),
            "--generation-database",
            "none",
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--no-color",
        ],
        cwd=tmp_path,  # `.schemathesis/` and any report land here, not in the work tree
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    took = time.monotonic() - started
    print(f"schemathesis, {mode} mode: {took:.0f} s")
    assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-3000:]
    assert "passed" in run.stdout.lower()
    assert took < 60, took
