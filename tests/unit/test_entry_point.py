"""The `scaleout` command that `pip install` puts beside the interpreter is the lab's CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_installed_scaleout_command_runs() -> None:
    command = Path(sys.executable).parent / "scaleout"
    assert command.exists(), f"{command}: run `make setup`"
    result = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    for verb in ("up", "demo", "bench", "compose", "lab"):
        assert verb in result.stdout
