"""The demo's outputs: one comparison table (terminal and Markdown), demo.json and the PNG charts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLUMNS = (
    "mode",
    "success",
    "requests per replica",
    "p50 ms",
    "p99 ms",
    "5xx when a replica died",
    "sessions lost",
    "Redis down",
    "revocation window",
)


def _pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def _spread(counts: dict[str, int]) -> str:
    return "/".join(str(v) for k, v in sorted(counts.items()) if k != "-") or "-"


def _row(mode: str, r: dict[str, Any], **rest: str) -> dict[str, str]:
    """A table row from one scenario's measurements; `rest` fills the fault and revocation columns."""
    row = {
        "mode": mode,
        "success": _pct(r["success_rate"]),
        "requests per replica": _spread(r["requests_per_replica"]),
        "p50 ms": f"{r['latency_ms']['p50']:.2f}",
        "p99 ms": f"{r['latency_ms']['p99']:.2f}",
        "5xx when a replica died": "-",
        "sessions lost": "-",
        "Redis down": "not used",
        "revocation window": "-",
    }
    row.update({k.replace("_", " "): v for k, v in rest.items()})
    return row


def device_latency(d: dict[str, Any] | None) -> str:
    """How long another device's revoked session kept working, in words."""
    if d is None:
        return "other device: not measured"
    if d["revoke_status"] == 404:
        return "other device: unknown to this replica (404)"
    if d["seconds_to_refuse"] is not None:
        return f"other device: {d['seconds_to_refuse']:.2f} s"
    if d["still_valid_for_s"] is not None:
        return f"other device: until exp ({d['still_valid_for_s']:.0f} s)"
    return "other device: still accepted"


def rows(results: dict[str, Any]) -> list[dict[str, str]]:
    """One row per mode, built only from what the run measured (absent scenarios give absent rows)."""
    out: list[dict[str, str]] = []
    rev = results.get("revocation", {})

    def window(key: str) -> str:
        r = rev.get(key)
        if r is None:
            return "-"
        if r["accepted_after_logout"] == 0:
            logout = "0 s"
        elif r["window_s"]:
            logout = f"until exp ({r['window_s']:.0f} s)"
        else:
            logout = f"{r['accepted_after_logout']} replays accepted"
        return f"{logout}; {device_latency(r.get('other_device'))}"

    if s := results.get("stateful_wall"):
        out.append(_row(s["mode"], s))
    if st := results.get("sticky"):
        s = st["sticky"]
        lost = f"{s['sessions_lost']} of {sum(s['users_per_replica'].values())}"
        died = {"5xx_when_a_replica_died": str(s["failed_5xx"])}
        out.append(_row(s["mode"], s, sessions_lost=lost, revocation_window=window("session/memory/sticky"), **died))
        out.append(_row(st["ip_hash"]["mode"], st["ip_hash"]))
    if s := results.get("clustering"):
        d = s["redis_down"]
        down = f"{d['status_503']}x 503, {d['status_200']} let in"
        out.append(
            _row(
                s["mode"],
                s,
                sessions_lost="all, on Redis restart",
                Redis_down=down,
                revocation_window=window("session/redis"),
            )
        )
    if s := results.get("jwt"):
        served = f"{_pct(s['success_rate_with_redis_and_auth_down'])} served (auth down too)"
        mode = s["mode"] + " (JWT_REVOCATION=none)"
        out.append(_row(mode, s, sessions_lost="0", Redis_down=served, revocation_window=window("jwt/none")))
    if "jwt/denylist" in rev:
        out.append(
            {
                "mode": "jwt/round_robin (JWT_REVOCATION=denylist)",
                "success": "-",
                "requests per replica": "-",
                "p50 ms": f"{rev['jwt/denylist']['me_p50_ms']:.2f}",
                "p99 ms": "-",
                "5xx when a replica died": "-",
                "sessions lost": "-",
                "Redis down": "503 (the denylist is needed)",
                "revocation window": f"{window('jwt/denylist')} (+{rev['denylist_cost_ms']:.2f} ms/request)",
            }
        )
    return out


def markdown_table(table: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row[c] for c in COLUMNS) + " |" for row in table]
    return "\n".join(lines)


def parse_markdown_table(text: str) -> list[dict[str, str]]:
    """The first table in a Markdown text, as dictionaries (for checking demo.md against demo.json)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]


def readings(results: dict[str, Any]) -> list[str]:
    """A plain-language reading of each scenario, from its numbers."""
    out = []
    if s := results.get("stateful_wall"):
        out.append(
            f"**The stateful wall** (session/memory/round_robin): only {_pct(s['success_rate'])} of requests "
            "succeeded. Each session lives in the memory of the replica that handled the login, and round robin "
            f"sends two requests in three elsewhere: per replica and status, {s['status_by_replica']}."
        )
    if st := results.get("sticky"):
        s, i = st["sticky"], st["ip_hash"]
        out.append(
            f"**Sticky sessions** (cookie `lb_route`): {_pct(s['success_rate'])} success, but the load follows "
            f"the users: users per replica {s['users_per_replica']} (max/mean {s['user_imbalance']}). Killing "
            f"{s['killed']} lost the sessions of exactly the {s['sessions_lost']} users pinned to it "
            f"(lost {s['lost_users']} = pinned {s['pinned_users']}), with {s['failed_5xx']} requests failing "
            f"outright; the others kept {_pct(s['unaffected_success_rate'])}. The lost users were served again "
            f"{s['recovery_s']:.2f} s after the kill, once they had logged in again."
        )
        out.append(
            f"**ip_hash**: {_pct(i['success_rate'])} success, pinned by address. Users behind one /24 (one NAT) "
            f"all landed together: {i['one_nat_users_per_replica']}; users from many /24s spread: "
            f"{i['many_networks_users_per_replica']}."
        )
    if s := results.get("clustering"):
        d = s["redis_down"]
        memory = results.get("sticky", {}).get("sticky", {}).get("latency_ms", {}).get("p50")
        price = f" against {memory:.2f} ms from memory" if memory else ""
        out.append(
            f"**Session clustering** (Redis): {_pct(s['success_rate'])} success on every replica, at a p50 of "
            f"{s['latency_ms']['p50']:.2f} ms{price}. With Redis down for {d['seconds']:.1f} s, {d['status_503']} "
            f"of {d['requests']} requests got 503 and {d['status_200']} were let in. Redis keeps no data across "
            f"a restart here, so users logged in again; all were served {s['recovery_s']:.2f} s after Redis "
            "returned, with no other service restarted."
        )
    if s := results.get("jwt"):
        out.append(
            f"**Stateless JWT**: {_pct(s['success_rate'])} success, and "
            f"{_pct(s['success_rate_with_redis_and_auth_down'])} with Redis and the auth service both stopped: any "
            f"replica verifies a token alone. The price on the wire: {s['token_bytes']} bytes of "
            f"`Authorization` header against {s['session_cookie_bytes']} bytes of session cookies."
        )
    if rev := results.get("revocation"):
        parts = [
            f"{k}: {v['accepted_after_logout']} of {v['replays']} replays accepted"
            for k, v in rev.items()
            if isinstance(v, dict)
        ]
        devices = "; ".join(
            f"{k}: {device_latency(v.get('other_device')).removeprefix('other device: ')}"
            for k, v in rev.items()
            if isinstance(v, dict)
        )
        out.append(
            "**Revocation latency** (a user ends the session of their other device from the sessions list, "
            f"while that device keeps sending requests to every replica): {devices}. Redis sessions and the JWT "
            "denylist end it at the next request on every replica; a JWT without the denylist only loses its "
            "refresh token, and its access token works until `exp`; memory sessions are only visible, and so "
            "only endable, on the replica that holds them."
        )
        out.append(
            "**Revocation window** (a user logs out while an attacker replays the stolen credential on every "
            f"replica): {'; '.join(parts)}. A JWT without a denylist stays valid until `exp` "
            f"({rev['jwt/none']['window_s']:.0f} s left here); the denylist closes the window at a cost of "
            f"{rev['denylist_cost_ms']:.2f} ms per request at p50, and brings back the dependency on Redis."
        )
    if s := results.get("live_switch"):
        steps = ", ".join(
            f"{w['from']}→{w['to']}: {w['failed']} failed of {w['requests_around_reload']}" for w in s["switches"]
        )
        failures = "; ".join(f"{n} x {what}" for what, n in s.get("failures", {}).items())
        out.append(
            f"**Live balancer switch** under load ({s['requests']} requests in all, {s['failed']} failed"
            f"{': ' + failures if failures else ''}): {steps}. nginx tests the new config, reloads gracefully, and "
            f"old workers finish their requests; {s.get('keepalive_retries', 0)} keep-alive request(s) met a "
            "connection a retiring worker had just closed and were retried once on a new one, as browsers do."
        )
    return out


def write(results: dict[str, Any], out: Path, quick: bool) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    table = rows(results)
    charts = _charts(results, out)
    document = {"quick": quick, "rows": table, "charts": charts, "scenarios": results}
    (out / "demo.json").write_text(json.dumps(document, indent=2, default=str))
    md = [
        "# scaleout demo",
        "",
        "Every row ran on its own freshly started local cluster: 3 replicas, real nginx and Redis.",
        "",
        markdown_table(table),
        "",
        "## What happened",
        "",
        *[f"- {line}" for line in readings(results)],
        "",
        "## Charts",
        "",
        *[f"![{Path(c).stem}]({c})" for c in charts],
        "",
    ]
    (out / "demo.md").write_text("\n".join(md))
    return document


def _charts(results: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[str] = []

    # 1. Requests per replica per mode.
    modes = [(r["mode"], r["requests_per_replica"]) for r in _mode_results(results)]
    if modes:
        fig, ax = plt.subplots(figsize=(10, 4.5))
        replicas = sorted({k for _, counts in modes for k in counts if k != "-"})
        width = 0.8 / max(1, len(replicas))
        for j, replica in enumerate(replicas):
            ax.bar(
                [i + j * width for i in range(len(modes))],
                [counts.get(replica, 0) for _, counts in modes],
                width,
                label=replica,
            )
        ax.set_xticks([i + width * (len(replicas) - 1) / 2 for i in range(len(modes))])
        ax.set_xticklabels([m.replace("/", "/\n", 1) for m, _ in modes], fontsize=8)
        ax.set_ylabel("requests answered")
        ax.set_title("Requests per replica, per mode (before faults)")
        ax.legend(title="replica")
        fig.tight_layout()
        fig.savefig(out / "requests_per_replica.png", dpi=110)
        plt.close(fig)
        made.append("requests_per_replica.png")

    # 2. Success rate over time around each fault.
    faults = []
    if st := results.get("sticky"):
        faults.append((f"sticky: {st['sticky']['killed']} killed at 0 s", st["sticky"]["timeline"], None))
    if s := results.get("clustering"):
        faults.append(("session/redis: Redis down", s["timeline"], s["fault_window"]))
    if s := results.get("jwt"):
        faults.append(("jwt: Redis and auth down", s["timeline"], s["fault_window"]))
    if faults:
        fig, axes = plt.subplots(1, len(faults), figsize=(4.5 * len(faults), 3.8), squeeze=False)
        for ax, (title, timeline, window) in zip(axes[0], faults, strict=True):
            if timeline:
                xs, ys = zip(*timeline, strict=True)
                ax.step(xs, [y * 100 for y in ys], where="post")
            ax.axvline(0, color="red", linestyle="--", label="fault")
            if window:
                ax.axvspan(window[0], window[1], color="red", alpha=0.1, label="outage")
            ax.set_ylim(-5, 105)
            ax.set_xlabel("seconds since the fault")
            ax.set_ylabel("requests succeeding (%)")
            ax.set_title(title, fontsize=10)
            ax.legend(fontsize=8, loc="lower right")
        fig.suptitle("Success rate around each fault")
        fig.tight_layout()
        fig.savefig(out / "faults_timeline.png", dpi=110)
        plt.close(fig)
        made.append("faults_timeline.png")

    # 3. Latency distribution per mode.
    latencies = [(r["mode"], r["latencies_ms"]) for r in _mode_results(results) if r.get("latencies_ms")]
    if latencies:
        fig, ax = plt.subplots(figsize=(10, 4.5))
        ax.boxplot([v for _, v in latencies], showfliers=False)
        ax.set_xticks(range(1, len(latencies) + 1))
        ax.set_xticklabels([m.replace("/", "/\n", 1) for m, _ in latencies], fontsize=8)
        ax.set_ylabel("latency of successful GET /api/me (ms)")
        ax.set_title("Latency per mode, through nginx (box: p25-p75, whiskers: 1.5 IQR)")
        fig.tight_layout()
        fig.savefig(out / "latency.png", dpi=110)
        plt.close(fig)
        made.append("latency.png")
    # 4. Revocation latency: seconds until every replica refuses a revoked device (bar), per mode.
    if rev := results.get("revocation"):
        labels, seconds, notes = [], [], []
        for key, value in rev.items():
            if not isinstance(value, dict) or "other_device" not in value:
                continue
            d = value["other_device"]
            labels.append(key)
            if d["seconds_to_refuse"] is not None:
                seconds.append(d["seconds_to_refuse"])
                notes.append(f"{d['seconds_to_refuse']:.2f} s")
            elif d["still_valid_for_s"] is not None:
                seconds.append(d["still_valid_for_s"])
                notes.append(f"until exp: {d['still_valid_for_s']:.0f} s")
            else:
                seconds.append(0.0)
                notes.append("not endable here" if d["revoke_status"] == 404 else "still accepted")
        if labels:
            fig, ax = plt.subplots(figsize=(8, 4))
            bars = ax.bar(labels, seconds, color=["tab:green" if s < 1 else "tab:red" for s in seconds])
            for bar, note in zip(bars, notes, strict=True):
                ax.annotate(note, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
            ax.set_ylabel("seconds until every replica refuses it")
            ax.set_title("Revocation latency: another device's session ended from the sessions list")
            fig.tight_layout()
            fig.savefig(out / "revocation_latency.png", dpi=110)
            plt.close(fig)
            made.append("revocation_latency.png")
    return made


def _mode_results(results: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for name in ("stateful_wall", "sticky", "clustering", "jwt"):
        r = results.get(name)
        if r is None:
            continue
        if name == "sticky":
            found += [r["sticky"], r["ip_hash"]]
        else:
            found.append(r)
    return found
