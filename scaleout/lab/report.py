"""The demo's outputs from its typed results: the comparison table (terminal and Markdown), a reading of
each scenario in words and numbers, demo.json and the PNG charts."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaleout.lab.demo_results import DemoResults, DeviceRevocation, OverloadStep, RevocationMode, Traffic
from scaleout.lab.table import Column, render


@dataclass(frozen=True)
class Row:
    """One line of the comparison table."""

    mode: str
    success: str = "-"
    requests_per_replica: str = "-"
    p50_ms: str = "-"
    p99_ms: str = "-"
    died_5xx: str = "-"
    sessions_lost: str = "-"
    redis_down: str = "not used"
    revocation_window: str = "-"


# Declared once: the Markdown table has them all; the terminal shows them as two tables that fit 120
# characters (steady traffic, then faults and revocation), each starting with the mode.
COLUMNS_BY_TITLE = (
    Column[Row]("mode", lambda r: r.mode),
    Column[Row]("success", lambda r: r.success),
    Column[Row]("requests per replica", lambda r: r.requests_per_replica),
    Column[Row]("p50 ms", lambda r: r.p50_ms),
    Column[Row]("p99 ms", lambda r: r.p99_ms),
    Column[Row]("5xx when a replica died", lambda r: r.died_5xx),
    Column[Row]("sessions lost", lambda r: r.sessions_lost),
    Column[Row]("Redis down", lambda r: r.redis_down),
    Column[Row]("revocation window", lambda r: r.revocation_window),
)
COLUMNS = tuple(c.title for c in COLUMNS_BY_TITLE)
TERMINAL_TABLES = (COLUMNS_BY_TITLE[:5], (COLUMNS_BY_TITLE[0], *COLUMNS_BY_TITLE[5:]))


def _pct(x: float) -> str:
    return f"{x * 100:.0f}%"


def _spread(counts: dict[str, int]) -> str:
    return "/".join(str(v) for k, v in sorted(counts.items()) if k != "-") or "-"


def _in_words(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


def _statuses_in_words(by_replica: dict[str, dict[str, int]]) -> str:
    names = {"200": "answered", "401": "refused (401)", "503": "503", "599": "no answer"}
    return "; ".join(
        f"{replica} " + ", ".join(f"{n} {names.get(code, code)}" for code, n in sorted(codes.items()))
        for replica, codes in by_replica.items()
        if replica != "-"
    )


def _traffic_row(t: Traffic, mode: str | None = None, **rest: str) -> Row:
    return Row(
        mode=mode or t.mode,
        success=_pct(t.success_rate),
        requests_per_replica=_spread(t.requests_per_replica),
        p50_ms=f"{t.latency_ms.p50:.2f}",
        p99_ms=f"{t.latency_ms.p99:.2f}",
        **rest,
    )


def device_latency(d: DeviceRevocation | None) -> str:
    """How long another device's revoked session kept working, in words."""
    if d is None:
        return "other device: not measured"
    if d.revoke_status == 404:
        return "other device: unknown to this replica (404)"
    if d.seconds_to_refuse is not None:
        return f"other device: {d.seconds_to_refuse:.2f} s"
    if d.still_valid_for_s is not None:
        return f"other device: until exp ({d.still_valid_for_s:.0f} s)"
    return "other device: still accepted"


def _window(r: RevocationMode | None) -> str:
    if r is None:
        return "-"
    if r.accepted_after_logout == 0:
        logout = "0 s"
    elif r.window_s:
        logout = f"until exp ({r.window_s:.0f} s)"
    else:
        logout = f"{r.accepted_after_logout} replays accepted"
    return f"{logout}; {device_latency(r.other_device)}"


def rows(results: DemoResults) -> list[Row]:
    """One row per mode, built only from what the run measured (absent scenarios give absent rows)."""
    out: list[Row] = []
    rev = results.revocation.modes if results.revocation else {}
    if k := results.cookie_only:
        window = f"never: {k.accepted_after_logout} of {k.replays_after_logout} replays after logout accepted"
        out.append(_traffic_row(k, sessions_lost="none stored", revocation_window=window))
    if s := results.stateful_wall:
        out.append(_traffic_row(s))
    if st := results.sticky:
        p = st.sticky
        lost = f"{p.sessions_lost} of {sum(p.users_per_replica.values())}"
        window = _window(rev.get("session/memory/sticky"))
        out.append(_traffic_row(p, died_5xx=str(p.failed_5xx), sessions_lost=lost, revocation_window=window))
        out.append(_traffic_row(st.ip_hash))
    if c := results.clustering:
        d = c.redis_down
        out.append(
            _traffic_row(
                c,
                sessions_lost=f"{c.sessions_lost_on_restart}, on Redis restart ({c.persistence})",
                redis_down=f"{d.status_503}x 503, {d.status_200} let in",
                revocation_window=_window(rev.get("session/redis")),
            )
        )
    if nc := results.near_cache:
        d = nc.redis_down
        rv = results.revocation
        window = _window(rev.get("session/redis + cache"))
        if rv and rv.near_cache_window_ms:
            window += f" (p99 {rv.near_cache_window_ms['p99']} ms after the write, {rv.near_cache_revocations} ended)"
        out.append(
            _traffic_row(
                nc,
                sessions_lost=f"{nc.sessions_lost_on_restart}, on Redis restart ({nc.persistence})",
                redis_down=f"{d.status_503}x 503, {d.status_200} let in",
                revocation_window=window,
            )
        )
    if f := results.store_failover:
        refused = f.during.get("503", 0)
        let_in = sum(n for code, n in f.during.items() if code not in ("200", "503"))
        out.append(
            _traffic_row(
                f,
                sessions_lost=f"{f.sessions_lost} (primary killed)",
                redis_down=f"failover: {refused}x 503 for {f.recovery_s:.1f} s, {let_in} other",
            )
        )
    if j := results.jwt:
        served = f"{_pct(j.success_rate_with_redis_and_auth_down)} served (auth down too)"
        out.append(
            _traffic_row(
                j,
                mode=j.mode + " (JWT_REVOCATION=none)",
                sessions_lost="0",
                redis_down=served,
                revocation_window=_window(rev.get("jwt/none")),
            )
        )
    if results.revocation and "jwt/denylist" in rev:
        deny = rev["jwt/denylist"]
        out.append(
            Row(
                mode="jwt/round_robin (JWT_REVOCATION=denylist)",
                p50_ms=f"{deny.me_p50_ms or 0:.2f}",
                redis_down="503 (the denylist is needed)",
                revocation_window=f"{_window(deny)} (+{results.revocation.denylist_cost_ms:.2f} ms/request)",
            )
        )
    return out


def table_cells(table: list[Row]) -> list[dict[str, str]]:
    return [{c.title: c.cell(r) for c in COLUMNS_BY_TITLE} for r in table]


def markdown_table(table: list[Row]) -> str:
    return "\n".join(render(COLUMNS_BY_TITLE, table))


def parse_markdown_table(text: str) -> list[dict[str, str]]:
    """The first table in a Markdown text, as dictionaries (for checking demo.md against demo.json)."""
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            break  # the first table ended
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")), strict=True)) for line in lines[2:]]


def readings(results: DemoResults) -> list[str]:
    """A plain-language reading of each scenario, from its numbers."""
    out = []
    if k := results.cookie_only:
        kept = ", ".join(f"{size} bytes {'kept' if ok else 'dropped'}" for size, ok in k.browser_kept.items())
        forged = "accepted" if k.forged_accepted else "refused"
        holds = "holds the password itself" if k.password_in_cookie else "does not hold the password"
        out.append(
            f"**The cookie alone** (AUTH_MODE=cookie, unsafe on purpose): {_pct(k.success_rate)} success on every "
            f"replica ({_spread(k.requests_per_replica)}): nothing is stored on the server, so it scales perfectly. "
            f"That is all it does well: a cookie edited to `user=bob` was {forged}; after its owner logged out, "
            f"{k.accepted_after_logout} of {k.replays_after_logout} replays of the captured cookie were accepted (the "
            f"server cannot forget what it never stored); the captured cookie {holds}. And a cookie is "
            f"small: {k.browser or 'a browser'} {kept or 'was not measured'}, so 'put the profile in the cookie' fails "
            "silently. Hence sessions: the browser keeps only a random ID, the server keeps the rest."
        )
    if s := results.stateful_wall:
        out.append(
            f"**The stateful wall** (session/memory/round_robin): only {_pct(s.success_rate)} of requests "
            "succeeded. Each session lives in the memory of the replica that handled the login, and round robin "
            f"sends two requests in three elsewhere: {_statuses_in_words(s.status_by_replica)}."
        )
    if st := results.sticky:
        p, i = st.sticky, st.ip_hash
        out.append(
            f"**Sticky sessions** (cookie `lb_route`): {_pct(p.success_rate)} success, but the load follows "
            f"the users: users per replica {_in_words(p.users_per_replica)} (busiest {p.user_imbalance}x the "
            f"mean). Killing {p.killed} lost the sessions of exactly the {p.sessions_lost} users pinned to it "
            f"({len(p.lost_users)} lost, {len(p.pinned_users)} pinned), with {p.failed_5xx} requests failing "
            f"outright; the others kept {_pct(p.unaffected_success_rate)}. The lost users were served again "
            f"{p.recovery_s:.2f} s after the kill, once they had logged in again."
        )
        out.append(
            f"**ip_hash**: {_pct(i.success_rate)} success, pinned by address. Users behind one /24 (one NAT) "
            f"all landed together: {_in_words(i.one_nat_users_per_replica)}; users from many /24s spread: "
            f"{_in_words(i.many_networks_users_per_replica)}."
            + (
                " On the container stack every client on the host reaches nginx through Docker's proxy for the "
                "published port, so nginx sees one address for all of them and ip_hash puts them all on one "
                "replica; clients inside the stack's network keep their own addresses."
                if results.target == "compose"
                else ""
            )
        )
    if c := results.clustering:
        d = c.redis_down
        memory = results.sticky.sticky.latency_ms.p50 if results.sticky else None
        price = f" against {memory:.2f} ms from memory" if memory else ""
        out.append(
            f"**Session clustering** (Redis): {_pct(c.success_rate)} success on every replica, at a p50 of "
            f"{c.latency_ms.p50:.2f} ms{price}. With Redis down for {d.seconds:.1f} s, {d.status_503} "
            f"of {d.requests} requests got 503 and {d.status_200} were let in. With REDIS_PERSISTENCE="
            f"{c.persistence}, {c.sessions_lost_on_restart} users had to log in again after the restart; all "
            f"were served {c.recovery_s:.2f} s after Redis returned, with no other service restarted."
        )
    if f := results.store_failover:
        logins = ", ".join(f"{n} x {code}" for code, n in f.logins_during.items()) or "none attempted"
        out.append(
            f"**Redis failover** (REDIS_TOPOLOGY=sentinel): the primary {f.killed} was killed under load; the "
            f"Sentinels promoted {f.new_primary} and every replica answered 200 again {f.recovery_s:.2f} s after "
            f"the kill. Meanwhile requests got {', '.join(f'{n} x {c}' for c, n in f.during.items())} (never a "
            f"401 for a good session, never a 500); logins tried meanwhile: {logins}. Sessions acknowledged before "
            f"the kill and lost after it: {f.sessions_lost} (each login waited for a replica to have its session)."
        )
    if g := results.replication_growth:
        steps = "; ".join(
            f"{p.servers} servers: {p.messages_per_login:g} messages, {p.bytes_per_login:.0f} bytes, "
            f"{p.fanout_ms:.1f} ms until every peer has it, replica CPU {p.replica_cpu_ms_per_login_replicated:.1f} "
            f"ms per login (memory store {p.replica_cpu_ms_per_login_memory:.1f})"
            for p in g.points
        )
        at = g.projection(100)
        out.append(
            f"**Session clustering by replication** (SESSION_STORE=replicated, every replica sends each change to "
            f"every other): {steps}. Every replica holds every session: {g.session_kib_per_10k_in_memory:.0f} KiB "
            f"per 10,000 sessions on each of them, against {g.session_kib_per_10k_in_redis:.0f} KiB once in a shared "
            f"Redis (which costs one write per login and one round trip per request, whatever the number of "
            f"servers) and nothing for JWT; a replica's near-cache (SESSION_CACHE=tracking) holds "
            f"{g.session_kib_per_10k_in_near_cache:.0f} KiB per 10,000 sessions it read, bounded by its entry cap. "
            f"At 100 servers and a million sessions: "
            f"{at['replicated_messages_per_login']:.0f} messages ({at['replicated_bytes_per_login'] / 1024:.0f} KiB) "
            f"per login and {at['replicated_memory_mib_total'] / 1024:.1f} GiB of memory in all for replication "
            f"(N - 1 messages per write, N copies), against {at['redis_messages_per_login']:.0f} message and "
            f"{at['redis_memory_mib_total']:.0f} MiB for Redis, and 0 for JWT."
        )
    if j := results.jwt:
        out.append(
            f"**Stateless JWT**: {_pct(j.success_rate)} success, and "
            f"{_pct(j.success_rate_with_redis_and_auth_down)} with Redis and the auth service both stopped: any "
            f"replica verifies a token alone. The price on the wire: {j.token_bytes} bytes of "
            f"`Authorization` header against {j.session_cookie_bytes} bytes of session cookies."
        )
    if rev := results.revocation:
        devices = "; ".join(
            f"{k}: {device_latency(v.other_device).removeprefix('other device: ')}" for k, v in rev.modes.items()
        )
        out.append(
            "**Revocation latency** (a user ends the session of their other device from the sessions list, "
            f"while that device keeps sending requests to every replica): {devices}. Redis sessions and the JWT "
            "denylist end it at the next request on every replica; a JWT without the denylist only loses its "
            "refresh token, and its access token works until `exp`; memory sessions are only visible, and so "
            "only endable, on the replica that holds them."
        )
        parts = [f"{k}: {v.accepted_after_logout} of {v.replays} replays accepted" for k, v in rev.modes.items()]
        none = rev.modes.get("jwt/none")
        out.append(
            "**Revocation window** (a user logs out while an attacker replays the stolen credential on every "
            f"replica): {'; '.join(parts)}. A JWT without a denylist stays valid until `exp` "
            f"({none.window_s if none else 0:.0f} s left here); the denylist closes the window at a cost of "
            f"{rev.denylist_cost_ms:.2f} ms per request at p50, and brings back the dependency on Redis."
        )
        if w := rev.near_cache_window_ms:
            out.append(
                f"**Near-cache invalidation** (SESSION_CACHE=tracking): {rev.near_cache_revocations} sessions ended "
                "in Redis while every replica's near-cache held them; every replica refused each one within "
                f"{w['p50']} ms of the write's acknowledgement at p50, {w['p90']} ms at p90, {w['p99']} ms at p99 "
                f"and {w['p100']} ms at worst (each replica asked again and again, all at once)."
            )
    if ls := results.live_switch:
        steps = ", ".join(
            f"{w.from_mode}→{w.to_mode}: {w.failed} failed of {w.requests_around_reload}" for w in ls.switches
        )
        failures = "; ".join(f"{n} x {what}" for what, n in ls.failures.items())
        out.append(
            f"**Live balancer switch** under load ({ls.requests} requests in all, {ls.failed} failed"
            f"{': ' + failures if failures else ''}): {steps}. nginx tests the new config, reloads gracefully, and "
            f"old workers finish their requests; {ls.keepalive_retries} keep-alive request(s) met a "
            "connection a retiring worker had just closed and were retried once on a new one, as browsers do."
        )
    return out


def _section(title: str, intro: str, header: list[str], rows: list[list[str]]) -> list[str]:
    """A titled Markdown table with a line before it."""
    return [
        f"## {title}",
        "",
        intro,
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]


def load_held(results: DemoResults) -> list[str]:
    """The slow_store scenario as a table: one row per fault, what every request got and how fast."""
    r = results.slow_store
    if r is None:
        return []
    return _section(
        "Load held: a slow, silent or resetting store (`make fault TARGET=redis`)",
        f"Users looping on /api/me; a store read's budget (REDIS_TIMEOUT) is {r.budget_ms:g} ms.",
        ["fault", "requests", "answers", "p50 ms", "p99 ms", "slowest ms", "200 again after clear"],
        [
            [
                p.fault,
                str(p.requests),
                ", ".join(f"{n}x {code}" for code, n in p.statuses.items()),
                str(p.p50_ms),
                str(p.p99_ms),
                str(p.max_ms),
                f"{p.recovery_s} s",
            ]
            for p in r.phases
        ],
    )


OVERLOAD_COLUMNS = [
    "offered",
    "admitted",
    "admitted p50 ms",
    "admitted p99 ms",
    "slowest answer ms",
    "shed (503)",
    "other errors",
    "generator lag p99 ms",
]


def _overload_row(p: OverloadStep, label: str = "") -> list[str]:
    return [
        f"{label}{p.offered_per_s:g}/s ({p.times_capacity:g}x)",
        f"{p.admitted_per_s:g}/s",
        str(p.admitted_p50_ms),
        str(p.admitted_p99_ms),
        str(p.slowest_ms),
        f"{p.shed_share:.0%}",
        str(p.other_errors),
        str(p.generator_lag_p99_ms),
    ]


def _recovered(seconds: float | None) -> str:
    return "NOT within 5 s" if seconds is None else f"{seconds * 1000:.0f} ms"


def overload_table(results: DemoResults) -> list[str]:
    r = results.overload
    if r is None:
        return []
    out = _section(
        "Load held: open-loop overload (session/redis)",
        f"Capacity made known: each replica holds {r.inflight_per_replica} requests at once and each waits "
        f"{r.store_ms:g} ms on the store, {r.capacity_per_s:g} requests/s. All served again right after: "
        f"{'yes' if r.recovery_all_200 else 'NO'}.",
        OVERLOAD_COLUMNS,
        [_overload_row(p) for p in r.steps],
    )
    if r.cpu_bound:
        out += _section(
            "Load held: CPU-bound overload",
            "The replicas capped together to a fraction of a core (so that five times what they serve can be "
            f"offered from the same machine), each holding {r.cpu_inflight_per_replica} requests at once; "
            "the capacity measured by wrk. "
            + " ".join(
                f"{m.mode}: {m.capacity_per_s:g} requests/s at {m.cpus:g} of a core, replica memory grew at most "
                f"{m.rss_growth_kib} KiB, all served again {_recovered(m.recovery_s)} after the load dropped."
                for m in r.cpu_bound
            ),
            OVERLOAD_COLUMNS,
            [_overload_row(p, f"{m.mode}: ") for m in r.cpu_bound for p in m.steps],
        )
    return out


def write(results: DemoResults, out: Path, quick: bool) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    table = rows(results)
    charts = _charts(results, out)
    document = {"quick": quick, "rows": table_cells(table), "charts": charts, "scenarios": results.to_json()}
    (out / "demo.json").write_text(json.dumps(document, indent=2, default=str))
    md = [
        "# scaleout demo",
        "",
        "Every row ran on its own freshly started local cluster: 3 replicas, real nginx and Redis.",
        "",
        markdown_table(table),
        "",
        *load_held(results),
        *overload_table(results),
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


STATUS_COLOURS = {"200": "tab:green", "401": "tab:red", "503": "tab:orange", "other": "tab:grey"}


def _charts(results: DemoResults, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[str] = []

    # 1. Requests per replica per mode, each replica's bar stacked by status: the wall shows as red.
    modes = results.traffic()
    if modes:
        fig, ax = plt.subplots(figsize=(10, 4.8))
        replicas = sorted({k for t in modes for k in t.requests_per_replica if k != "-"})
        width = 0.8 / max(1, len(replicas))
        labelled: set[str] = set()
        for slot, replica in enumerate(replicas):
            xs = [i + slot * width for i in range(len(modes))]
            bottom = [0.0] * len(modes)
            for status in STATUS_COLOURS:
                values = []
                for t in modes:
                    codes = t.status_by_replica.get(replica, {})
                    n = (
                        sum(v for k, v in codes.items() if k not in ("200", "401", "503"))
                        if status == "other"
                        else codes.get(status, 0)
                    )
                    values.append(float(n))
                if not any(values):
                    continue
                label = None if status in labelled else ("other" if status == "other" else f"HTTP {status}")
                labelled.add(status)
                ax.bar(xs, values, width, bottom=bottom, color=STATUS_COLOURS[status], label=label, edgecolor="white")
                bottom = [b + v for b, v in zip(bottom, values, strict=True)]
            for x, total in zip(xs, bottom, strict=True):
                ax.annotate(replica.removeprefix("api-"), (x, total), ha="center", va="bottom", fontsize=7)
        ax.set_xticks([i + width * (len(replicas) - 1) / 2 for i in range(len(modes))])
        ax.set_xticklabels([t.mode.replace("/", "/\n", 1) for t in modes], fontsize=8)
        ax.set_ylabel("requests answered")
        ax.set_title("Requests per replica (bars 1, 2, 3), by status, per mode (before faults)")
        ax.legend(title="status")
        fig.tight_layout()
        fig.savefig(out / "requests_per_replica.png", dpi=110)
        plt.close(fig)
        made.append("requests_per_replica.png")

    # 2. Success rate over time around each fault.
    faults: list[tuple[str, list[tuple[float, float]], tuple[float, float] | None]] = []
    if st := results.sticky:
        faults.append((f"sticky: {st.sticky.killed} killed at 0 s", st.sticky.timeline, None))
    if c := results.clustering:
        faults.append(("session/redis: Redis down", c.timeline, c.fault_window))
    if f := results.store_failover:
        faults.append((f"sentinel: {f.killed} (primary) killed", f.timeline, f.fault_window))
    if j := results.jwt:
        faults.append(("jwt: Redis and auth down", j.timeline, j.fault_window))
    if faults:
        fig, axes = plt.subplots(1, len(faults), figsize=(4.5 * len(faults), 3.8), squeeze=False)
        for ax, (title, timeline, window) in zip(axes[0], faults, strict=True):
            if timeline:
                times, rates = zip(*timeline, strict=True)
                ax.step(times, [y * 100 for y in rates], where="post")
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
    latencies = [(t.mode, t.latencies_ms) for t in modes if t.latencies_ms]
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

    # 4b. Cost against the number of servers.
    if g := results.replication_growth:
        ns = [p.servers for p in g.points]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
        ax1.plot(ns, [p.messages_per_login for p in g.points], "o-", label="replicated: messages per login")
        ax1.plot(ns, [g.redis_messages_per_login] * len(ns), "s--", label="shared Redis: writes per login")
        ax1.plot(ns, [0] * len(ns), "^:", label="JWT: shared writes per request")
        ax1.set_xlabel("servers (replicas)")
        ax1.set_ylabel("messages per login")
        ax1.set_title("Messages per login, measured")
        ax1.legend(fontsize=8)
        mem = g.session_kib_per_10k_in_memory / 1024
        ax2.plot(ns, [n * mem for n in ns], "o-", label="replicated: N copies")
        ax2.plot(ns, [g.session_kib_per_10k_in_redis / 1024] * len(ns), "s--", label="shared Redis: one copy")
        ax2.plot(ns, [0] * len(ns), "^:", label="JWT: none")
        ax2.set_xlabel("servers (replicas)")
        ax2.set_ylabel("MiB per 10,000 sessions, whole cluster")
        ax2.set_title("Session memory, from the measured size")
        ax2.legend(fontsize=8)
        fig.suptitle("What session clustering costs as servers are added")
        fig.tight_layout()
        fig.savefig(out / "growth.png", dpi=110)
        plt.close(fig)
        made.append("growth.png")

    # 4. Revocation latency: seconds until every replica refuses a revoked device, per mode.
    if rev := results.revocation:
        labels, seconds, notes = [], [], []
        for key, value in rev.modes.items():
            d = value.other_device
            labels.append(key)
            if d.seconds_to_refuse is not None:
                seconds.append(d.seconds_to_refuse)
                notes.append(f"{d.seconds_to_refuse:.2f} s")
            elif d.still_valid_for_s is not None:
                seconds.append(d.still_valid_for_s)
                notes.append(f"until exp: {d.still_valid_for_s:.0f} s")
            else:
                seconds.append(0.0)
                notes.append("not endable here" if d.revoke_status == 404 else "still accepted")
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
