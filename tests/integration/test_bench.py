"""`scaleout bench --quick`: a smoke run; numbers were produced and no request failed (timing is not asserted)."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli

pytestmark = pytest.mark.cluster


def test_quick_bench_produces_numbers_and_no_request_fails(tmp_path) -> None:
    run = run_cli("bench", "--quick", "--out", str(tmp_path))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((tmp_path / "bench.json").read_text())
    modes = {m["mode"]: m for m in results["modes"]}
    assert set(modes) == {"session/redis", "session/redis + cache", "jwt RS256"}
    for mode, r in modes.items():
        for side in ("baseline", "me"):
            assert r[side]["rps"] > 0 and r[side]["requests"] > 0
            assert r[side]["errors"] == 0, (mode, side)
            assert r[side]["p50_ms"] > 0 and r[side]["p99_ms"] >= r[side]["p50_ms"]
            assert r[side]["cpu_us_per_request"]["api"] > 0
            assert r[side]["cpu_us_per_request"]["wrk (client)"] > 0
        assert r["ratio"]["min"] <= r["ratio"]["median"] <= r["ratio"]["max"]
    peers = {p["peer"]: p for p in results["peers"]}
    assert set(peers) == {
        "FastAPI tutorial (python-jose)",
        "fastapi-users JWTStrategy",
        "fastapi-users RedisStrategy",
        "authx (RS256)",
        "starsessions RedisStore",
        "Starlette SessionMiddleware (signed cookie)",
    }
    # The cache's Redis CPU per request, pooled over the runs: what the near-cache saves is measured.
    redis_us = {m: modes[m]["me"]["cpu_us_pooled"]["redis"] for m in ("session/redis", "session/redis + cache")}
    assert redis_us["session/redis + cache"] < redis_us["session/redis"], redis_us
    # What tracking costs Redis, measured apart: a key read by the three tracking connections costs table
    # memory and one invalidation per connection when written; a key nobody read, none (BCAST: all three).
    tracking = results["tracking"]
    assert tracking["table_bytes_per_key_default"] > 0, tracking
    assert tracking["invalidations_per_write_read_default"] == 3.0, tracking
    assert tracking["invalidations_per_write_unread_default"] == 0.0, tracking
    assert tracking["invalidations_per_write_unread_bcast"] == 3.0, tracking
    assert tracking["invalidations_per_renewal"] == 3.0, tracking  # a renewal (GETEX) is a write too
    assert all(tracking[k] > 0 for k in ("login_cpu_us", "renewal_cpu_us", "revocation_cpu_us")), tracking
    assert "Near-cache costs to Redis" in (tmp_path / "bench.md").read_text()
    for p in peers.values():
        assert p["peer_rps"] > 0 and p["peer_unauthenticated_rps"] > 0 and p["ours_rps"] > 0
        assert p["errors"] == 0, p
    assert results["login"]["argon2"] == {"time_cost": 2, "memory_kib": 19456, "parallelism": 1}
    assert set(results["signing_ms"]) == {"RS256", "ES256", "HS256"}
    persistence = results["persistence"]  # the append-only file's cost, measured both ways in the same run
    assert all(persistence[k] > 0 for k in ("put_ms_none", "put_ms_aof", "redis_cpu_us_none", "redis_cpu_us_aof"))
    assert "Persistence: a login's session write takes" in (tmp_path / "bench.md").read_text()
    micro = results["micro"]
    assert micro["session_mac_seal_us"] > 0 and micro["memory_login_at_capacity_us"] > 0
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "bench.md").read_text()
    assert "| jwt RS256 |" in md and "| fastapi-users RedisStrategy |" in md
    # Without a terminal the table prints as Markdown, every cell whole.
    assert any(line.startswith("| jwt RS256 |") for line in run.stdout.splitlines()), run.stdout
    assert "…" not in run.stdout
