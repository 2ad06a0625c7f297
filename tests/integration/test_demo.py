"""`scaleout demo --quick`: the shape of the truth, not exact numbers, and reports that agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli

from scaleout.lab.report import COLUMNS, parse_markdown_table

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    out = tmp_path_factory.mktemp("demo")
    # 30 requests per user: the wall scenario's 180 samples put its 1-in-3 expectation 4 sigma inside the bounds.
    run = run_cli("demo", "--quick", "--requests", "30", "--out", str(out))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads((out / "demo.json").read_text()), out, run.stdout


def test_the_stateful_wall_fails_about_two_requests_in_three(demo) -> None:
    s = demo[0]["scenarios"]["stateful_wall"]
    assert 0.2 <= s["success_rate"] <= 0.5
    assert set(s["requests_per_replica"]) == {"api-1", "api-2", "api-3"}


def test_sticky_redis_and_jwt_succeed_fully_before_faults(demo) -> None:
    sc = demo[0]["scenarios"]
    assert sc["sticky"]["sticky"]["success_rate"] == 1.0
    assert sc["sticky"]["ip_hash"]["success_rate"] == 1.0
    assert sc["clustering"]["success_rate"] == 1.0
    assert sc["jwt"]["success_rate"] == 1.0


def test_killing_a_sticky_replica_loses_exactly_its_users(demo) -> None:
    s = demo[0]["scenarios"]["sticky"]["sticky"]
    assert s["lost_users"] == s["pinned_users"] and s["lost_users"]
    assert s["failed_5xx"] == 0
    assert s["unaffected_success_rate"] == 1.0
    assert s["relogin_ok"]


def test_ip_hash_puts_one_nat_on_one_replica(demo) -> None:
    s = demo[0]["scenarios"]["sticky"]["ip_hash"]
    assert len(s["one_nat_users_per_replica"]) == 1
    assert len(s["many_networks_users_per_replica"]) >= 2


def test_redis_down_gives_503_and_never_lets_anyone_in(demo) -> None:
    s = demo[0]["scenarios"]["clustering"]
    down = s["redis_down"]
    assert down["requests"] > 0 and down["status_503"] == down["requests"]
    assert down["status_200"] == 0
    assert s["healed"]
    assert s["persistence"] == "aof" and s["sessions_lost_on_restart"] == 0  # kept in the append-only file


def test_a_slow_silent_or_resetting_store_gets_bounded_answers_and_heals(demo) -> None:
    r = demo[0]["scenarios"]["slow_store"]
    phases = {p["fault"]: p for p in r["phases"]}
    assert list(phases) == ["latency 50ms", "latency 2000ms", "blackhole", "reset"]
    budget = r["budget_ms"]
    for name, p in phases.items():
        assert p["requests"] > 0 and set(p["statuses"]) <= {"200", "503"}, (name, p)  # never a 500, never let in
        assert p["max_ms"] < budget + 500, (name, p)  # nobody waited past the budget (and some slack)
        assert p["recovery_s"] < 1.0, (name, p)
    assert set(phases["latency 50ms"]["statuses"]) == {"200"} and phases["latency 50ms"]["p50_ms"] >= 50
    for beyond in ("latency 2000ms", "blackhole", "reset"):
        assert set(phases[beyond]["statuses"]) == {"503"}, phases[beyond]
    assert "## Load held" in (demo[1] / "demo.md").read_text()


def test_an_open_loop_overload_is_shed_and_the_admitted_stay_quick(demo) -> None:
    r = demo[0]["scenarios"]["overload"]
    steps = {s["times_capacity"]: s for s in r["steps"]}
    assert set(steps) == {0.5, 1.0, 2.0, 5.0}
    for x, s in steps.items():
        # The demo's own process generates the load beside a whole demo run: its lag counts into the latency
        # (timed from when each request was due), so the bound here is loose; test_faults holds the 50 ms.
        assert s["other_errors"] == 0 and s["slowest_ms"] < 1000 and s["admitted_p99_ms"] < 250, (x, s)
    assert steps[0.5]["shed_share"] < 0.05
    for x in (2.0, 5.0):
        assert steps[x]["shed_share"] > 0.3 and steps[x]["admitted_per_s"] <= 1.25 * r["capacity_per_s"], steps[x]
    assert r["recovery_all_200"]
    assert [m["mode"] for m in r["cpu_bound"]] == ["session/redis", "jwt + denylist"]
    for m in r["cpu_bound"]:  # test_overload holds the 50 ms; here the report's figures must be the run's
        assert [s["times_capacity"] for s in m["steps"]] == [1, 2, 5] and m["capacity_per_s"] > 0, m
        assert all(s["other_errors"] == 0 and s["slowest_ms"] < 1000 for s in m["steps"]), m
        assert m["steps"][2]["shed_share"] > 0.3 and m["recovery_s"] is not None and m["recovery_s"] < 1.0, m
    md = (demo[1] / "demo.md").read_text()
    assert "open-loop overload" in md and "CPU-bound overload" in md
    assert f"jwt + denylist: {m['capacity_per_s']:g} requests/s" in md


def test_a_redis_failover_loses_no_acknowledged_session(demo) -> None:
    f = demo[0]["scenarios"]["store_failover"]
    assert f["success_rate"] == 1.0
    assert f["new_primary"] != f["killed"]
    assert f["sessions_lost"] == 0
    assert set(f["during"]) <= {"200", "503"} and f["during"].get("503", 0) > 0
    assert 0 < f["recovery_s"] < 10


def test_the_cookie_alone_scales_but_is_forged_stolen_and_too_small(demo) -> None:
    k = demo[0]["scenarios"]["cookie_only"]
    assert k["success_rate"] == 1.0 and set(k["requests_per_replica"]) == {"api-1", "api-2", "api-3"}
    assert k["forged_accepted"] and k["password_in_cookie"]
    assert k["accepted_after_logout"] == k["replays_after_logout"] > 0
    assert k["browser"].startswith("Chromium")
    assert k["browser_kept"] == {"4000": True, "4080": True, "5000": False}  # measured in the real browser


def test_replication_costs_grow_with_the_servers_redis_does_not(demo) -> None:
    g = demo[0]["scenarios"]["replication_growth"]
    by_n = {p["servers"]: p for p in g["points"]}
    assert by_n[1]["messages_per_login"] == 0  # nobody to tell
    assert by_n[3]["messages_per_login"] >= 2  # every other replica, for every change
    assert by_n[3]["bytes_per_login"] > by_n[1]["bytes_per_login"]
    assert g["session_kib_per_10k_in_memory"] > 0 and g["session_kib_per_10k_in_redis"] > 0
    assert g["redis_messages_per_login"] == 1


def test_jwt_survives_redis_and_auth_down(demo) -> None:
    s = demo[0]["scenarios"]["jwt"]
    assert s["success_rate_with_redis_and_auth_down"] == 1.0
    assert s["token_bytes"] > s["session_cookie_bytes"]


def test_revocation_windows(demo) -> None:
    r = demo[0]["scenarios"]["revocation"]["modes"]
    assert r["jwt/none"]["accepted_after_logout"] == r["jwt/none"]["replays"]
    assert r["jwt/none"]["window_s"] > 0
    for key in ("jwt/denylist", "session/redis", "session/memory/sticky", "session/redis + cache"):
        assert r[key]["accepted_after_logout"] == 0, key
        assert r[key]["logout_status"] == 204, key


def test_the_near_cache_serves_everyone_never_lets_in_and_hears_of_every_end_within_5_ms(demo) -> None:
    s = demo[0]["scenarios"]["near_cache"]
    assert s["success_rate"] == 1.0 and set(s["requests_per_replica"]) == {"api-1", "api-2", "api-3"}
    down = s["redis_down"]
    assert down["requests"] > 0 and down["status_503"] == down["requests"] and down["status_200"] == 0
    r = demo[0]["scenarios"]["revocation"]
    assert r["near_cache_revocations"] == 100
    assert r["near_cache_window_ms"]["p99"] < 5.0, r["near_cache_window_ms"]
    assert "SESSION_CACHE=tracking" in (demo[1] / "demo.md").read_text()


def test_revocation_latency_of_another_device(demo) -> None:
    r = demo[0]["scenarios"]["revocation"]["modes"]
    for key in ("jwt/denylist", "session/redis"):
        d = r[key]["other_device"]
        assert d["revoke_status"] == 204 and d["seconds_to_refuse"] is not None, key
        assert d["seconds_to_refuse"] < 1.0, key  # at the next request on every replica
    none = r["jwt/none"]["other_device"]
    assert none["revoke_status"] == 204 and none["seconds_to_refuse"] is None and none["still_valid_for_s"] > 0
    memory = r["session/memory/sticky"]["other_device"]
    assert memory["revoke_status"] in (204, 404)  # only the replica holding it can end it


def test_live_switch_loses_no_request(demo) -> None:
    s = demo[0]["scenarios"]["live_switch"]
    assert s["failed"] == 0 and s["requests"] > 0, s["failures"]
    assert [w["to_mode"] for w in s["switches"]] == ["sticky", "ip_hash", "round_robin"]


def test_reports_exist_pngs_are_images_and_md_agrees_with_json(demo) -> None:
    document, out, stdout = demo
    md = (out / "demo.md").read_text()
    assert parse_markdown_table(md) == document["rows"]
    assert len(document["rows"]) == 9  # one per mode measured, the near-cache row included
    assert all(set(row) == set(COLUMNS) for row in document["rows"])
    assert len(document["charts"]) == 5
    for chart in document["charts"]:
        data = (out / chart).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert f"]({chart})" in md
    # Without a terminal the tables print as Markdown, every cell whole (never cut to 80 columns).
    printed = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert any(line.startswith("| session/memory/round_robin |") for line in printed), stdout[-3000:]
    assert "…" not in stdout
    for row in parse_markdown_table(md):  # each mode's row, its name whole, in both printed tables
        assert sum(line.startswith(f"| {row['mode']} |") for line in printed) == 2, row["mode"]
    assert "{'" not in stdout and "{'" not in md  # readings in words, never Python reprs
