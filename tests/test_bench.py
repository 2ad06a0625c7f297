"""`scaleout bench --quick`: a smoke run; numbers were produced and no request failed (timing is not asserted)."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli

pytestmark = pytest.mark.integration


def test_quick_bench_produces_numbers_and_no_request_fails(tmp_path) -> None:
    run = run_cli("bench", "--quick", "--out", str(tmp_path))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((tmp_path / "bench.json").read_text())
    for mode in ("session/redis", "jwt RS256"):
        r = results[mode]
        for side in ("baseline", "me"):
            assert r[side]["rps"] > 0 and r[side]["requests"] > 0
            assert r[side]["errors"] == 0, (mode, side)
            assert r[side]["p50_ms"] > 0 and r[side]["p99_ms"] >= r[side]["p50_ms"]
            assert r[side]["cpu_us_per_request"]["api"] > 0
            assert r[side]["cpu_us_per_request"]["wrk (client)"] > 0
        assert r["ratio_min"] <= r["ratio_median"] <= r["ratio_max"]
    assert results["reference"]["reference_rps"] > 0 and results["reference"]["reference_errors"] == 0
    assert results["login"]["argon2"] == {"time_cost": 2, "memory_kib": 19456, "parallelism": 1}
    assert set(results["signing_ms"]) == {"RS256", "ES256", "HS256"}
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| jwt RS256 |" in (tmp_path / "bench.md").read_text()
