"""A mistyped mode or a setting out of range: one line naming the variable, the value and what is allowed,
exit status 2, before anything starts (no traceback, no pydantic links), in every verb."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scaleout.core.config import ROOT

VERBS = [
    ["up"],
    ["down"],
    ["status"],
    ["lb", "sticky"],
    ["stop", "api-2"],
    ["start", "api-2"],
    ["lab"],
    ["bench", "--quick", "--out", "{tmp}"],
    ["demo", "--quick", "--out", "{tmp}"],
    ["compose", "up"],
    ["compose", "down"],
    ["compose", "status"],
    ["compose", "lb", "sticky"],
    ["compose", "stop", "api-2"],
    ["compose", "start", "api-2"],
    ["render-nginx"],
]
BAD = [
    ("AUTH_MODE", "jwtt", "one of session, jwt, cookie"),
    ("REPLICAS", "0", "a whole number from 1 to 9"),
    ("LB_MODE", "sticky2", "one of round_robin, sticky, ip_hash"),
    ("MAX_SESSIONS_PER_USER", "many", "a whole number from 1 to 1000"),
]


def run(argv: list[str], env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=ROOT,
        # A cluster directory of its own: were the check missing, nothing of `make up`'s would be touched.
        env={**os.environ, "CI": "true", "CLUSTER_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def assert_one_line(result: subprocess.CompletedProcess[str], variable: str, value: str, allowed: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{variable}={value}" in lines[0] and allowed in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout and "pydantic" not in result.stderr


@pytest.mark.parametrize("verb", VERBS, ids=lambda v: " ".join(v))
def test_every_verb_answers_a_mistyped_mode_with_one_line_and_exit_2(verb: list[str], tmp_path: Path) -> None:
    argv = [word.format(tmp=tmp_path) for word in verb]
    result = run([sys.executable, "-m", "scaleout", *argv], {"AUTH_MODE": "jwtt"}, tmp_path)
    assert_one_line(result, "AUTH_MODE", "jwtt", "one of session, jwt, cookie")
    assert not list(tmp_path.iterdir())  # nothing was started, nothing written


@pytest.mark.parametrize(("variable", "value", "allowed"), BAD, ids=[b[0] for b in BAD])
def test_each_kind_of_bad_setting_names_what_is_allowed(
    variable: str, value: str, allowed: str, tmp_path: Path
) -> None:
    assert_one_line(
        run([sys.executable, "-m", "scaleout", "up"], {variable: value}, tmp_path), variable, value, allowed
    )


@pytest.mark.parametrize("kind", ["auth", "api", "secrets"])
def test_the_services_refuse_a_bad_setting_the_same_way(kind: str, tmp_path: Path) -> None:
    result = run([sys.executable, "-m", "services.serve", kind], {"REPLICAS": "10"}, tmp_path)
    assert_one_line(result, "REPLICAS", "10", "a whole number from 1 to 9")


def test_the_make_target_passes_the_line_and_the_status_through(tmp_path: Path) -> None:
    result = run(["make", "-s", "up", "AUTH_MODE=jwtt"], {}, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "AUTH_MODE=jwtt is not allowed: use one of session, jwt, cookie" in result.stderr
    assert "Traceback" not in result.stderr


def test_cookie_mode_is_refused_unless_someone_allows_it_on_purpose(tmp_path: Path) -> None:
    """The unsafe first stage runs where the local runner binds loopback and says so; a service started by
    hand, or a container stack, refuses it unless ALLOW_UNSAFE_COOKIE_MODE=true."""
    for argv in ([sys.executable, "-m", "services.serve", "api"], [sys.executable, "-m", "scaleout", "compose", "up"]):
        result = run(argv, {"AUTH_MODE": "cookie"}, tmp_path)
        assert result.returncode in (1, 2), (argv, result.returncode, result.stderr)
        assert "ALLOW_UNSAFE_COOKIE_MODE=true" in result.stderr and "Traceback" not in result.stderr
        assert not list(tmp_path.iterdir())  # refused before anything was started or written
