"""`make bench`'s outputs from its typed results: bench.md (tables declared once), bench.json, bench.png."""

from __future__ import annotations

import json
from pathlib import Path

from scaleout.lab.bench.results import BenchResults, Capacity, ModeResult, PeerResult, ShardCost, ShardProjection
from scaleout.lab.bench.wrk import CLIENT
from scaleout.lab.table import Column, render


def _cpu(m: ModeResult) -> str:
    c = m.me.cpu_us_per_request
    return f"{c['api']}, {c['nginx']}, {c['redis']}; {c[CLIENT]}"


MODE_COLUMNS = (
    Column[ModeResult]("mode", lambda m: m.mode),
    Column[ModeResult]("/api/me req/s", lambda m: str(m.me.rps)),
    Column[ModeResult]("/api/whoami req/s", lambda m: str(m.baseline.rps)),
    Column[ModeResult]("ratio (median)", lambda m: str(m.ratio.median)),
    Column[ModeResult]("min-max", lambda m: f"{m.ratio.min}-{m.ratio.max}"),
    Column[ModeResult]("p50 ms", lambda m: str(m.me.p50_ms)),
    Column[ModeResult]("p99 ms", lambda m: str(m.me.p99_ms)),
    Column[ModeResult]("p99.9 ms", lambda m: str(m.me.p999_ms)),
    Column[ModeResult]("errors", lambda m: str(m.me.errors + m.baseline.errors)),
    Column[ModeResult]("CPU µs/req (api, nginx, redis; wrk)", _cpu),
    Column[ModeResult]("auth check µs/req", lambda m: str(m.auth_check_us)),
)
# The terminal shows the first columns only (it must fit 120 characters).
TERMINAL_COLUMNS = MODE_COLUMNS[:9]


PEER_COLUMNS = (
    Column[PeerResult]("peer", lambda p: p.peer),
    Column[PeerResult]("against our", lambda p: p.against),
    Column[PeerResult]("peer authenticated req/s", lambda p: str(p.peer_rps)),
    Column[PeerResult]("peer unauthenticated req/s", lambda p: str(p.peer_unauthenticated_rps)),
    Column[PeerResult]("ours req/s", lambda p: str(p.ours_rps)),
    Column[PeerResult](
        "ours ÷ peer (median)", lambda p: f"{p.ours_over_peer.median} ({p.ours_over_peer.min}-{p.ours_over_peer.max})"
    ),
    Column[PeerResult]("errors", lambda p: str(p.errors)),
)


CAPACITY_COLUMNS = (
    Column[Capacity]("mode", lambda c: c.mode),
    Column[Capacity]("replica CPU µs/req", lambda c: str(c.api_us)),
    Column[Capacity]("nginx CPU µs/req", lambda c: str(c.nginx_us)),
    Column[Capacity]("Redis CPU µs/req", lambda c: str(c.redis_us)),
    Column[Capacity]("one replica req/s", lambda c: str(c.replica_rps)),
    Column[Capacity](
        "req/s one Redis core carries", lambda c: f"{c.redis_core_rps:,}" if c.redis_core_rps else "nothing shared"
    ),
    Column[Capacity](
        "replicas per Redis core",
        lambda c: str(c.replicas_per_redis_core) if c.replicas_per_redis_core else "no limit from Redis",
    ),
)

SHARD_COLUMNS = (
    Column[ShardCost]("shard", lambda c: f"redis-shard-{c.shard} ({c.primary})"),
    Column[ShardCost]("sessions", lambda c: f"{c.sessions:,}"),
    Column[ShardCost]("KiB per 10k sessions", lambda c: f"{c.kib_per_10k_sessions:,}"),
    Column[ShardCost]("CPU µs per login", lambda c: str(c.login_cpu_us)),
    Column[ShardCost]("CPU µs per read", lambda c: str(c.read_cpu_us)),
    Column[ShardCost]("driven reads/s", lambda c: f"{c.drive_ops_per_s:,.0f}"),
    Column[ShardCost]("of a core", lambda c: f"{c.drive_cpu_share:.0%}"),
    Column[ShardCost]("reads per core-s", lambda c: f"{c.drive_ops_per_core_s:,.0f}"),
)
PROJECTION_COLUMNS = (
    Column[ShardProjection]("sessions", lambda p: f"{p.sessions:,}"),
    Column[ShardProjection]("API replicas", lambda p: f"{p.replicas:,}"),
    Column[ShardProjection]("shards for memory", lambda p: str(p.shards_for_memory)),
    Column[ShardProjection]("shards for CPU", lambda p: str(p.shards_for_cpu)),
    Column[ShardProjection]("shards (each + 1 replica)", lambda p: str(p.shards)),
)


def lines(results: BenchResults) -> list[str]:
    s = results.settings
    out = [
        "# scaleout bench",
        "",
        f"wrk {s.wrk}, {s.seconds} s per run, {s.pairs} interleaved pairs per mode (A B, B A, ...) from "
        f"{s.clusters} fresh clusters, each one replica behind nginx.",
        "",
        *render(MODE_COLUMNS, results.modes),
    ]
    if results.control:
        c = results.control
        out += [
            "",
            f"Noise control ({results.control_mode} cluster): /api/whoami against itself, same pairs: median "
            f"{c.median}, min-max {c.min}-{c.max}.",
        ]
    if results.peers:
        out += [
            "",
            "Peers, direct to one process each (no nginx), same uvicorn and wrk settings:",
            "",
            *render(PEER_COLUMNS, results.peers),
        ]
    if login := results.login:
        argon = ", ".join(f"{k}={v}" for k, v in login.argon2.items())
        signing = ", ".join(f"{alg} {ms} ms" for alg, ms in results.signing_ms.items())
        out += [
            "",
            f"Login: {login.logins_per_s_sequential} logins/s sequential, p50 {login.p50_ms} ms, Argon2id {argon}. "
            f"Signing a token with a prepared key: {signing}.",
        ]
    if m := results.micro:
        out += [
            "",
            f"Session MAC (HMAC-SHA256 over the store key and value): seal {m.session_mac_seal_us} µs, check "
            f"{m.session_mac_open_us} µs, once per distinct stored value per replica. Memory-store login: "
            f"{m.memory_login_below_capacity_us} µs below capacity, {m.memory_login_at_capacity_us} µs at capacity "
            "(each evicts the least recently used session).",
        ]
    if results.wait_cost:
        w = results.wait_cost
        out += [
            "",
            f"WAIT on a login (sentinel topology): the session write takes {w.put_ms_without_wait} ms at p50 "
            f"without `WAIT 1`, {w.put_ms_with_wait} ms with it (confirmed on a replica before the login answers).",
        ]
    if p := results.persistence:
        out += [
            "",
            f"Persistence: a login's session write takes {p.put_ms_aof} ms at p50 and {p.redis_cpu_us_aof} µs of "
            f"Redis CPU with REDIS_PERSISTENCE=aof (appendfsync everysec), {p.put_ms_none} ms and "
            f"{p.redis_cpu_us_none} µs without; reads are untouched (the append-only file records writes only).",
        ]
    if t := results.tracking:
        out += [
            "",
            f"Near-cache costs to Redis ({t.replicas} tracking connections, each having read {t.keys:,} keys): "
            f"the tracking table takes {t.table_bytes_per_key_default} bytes per key (BCAST: "
            f"{t.table_bytes_per_key_bcast}, it tracks prefixes, not keys). Keys invalidated per write, summed "
            f"over the connections: {t.invalidations_per_write_read_default} to a key they read and "
            f"{t.invalidations_per_write_unread_default} to a new one in the default mode, "
            f"{t.invalidations_per_write_read_bcast} and {t.invalidations_per_write_unread_bcast} with BCAST. "
            f"Redis CPU per SET: {t.write_cpu_us_untracked} µs untracked, {t.write_cpu_us_read_default} µs "
            f"tracked by default, {t.write_cpu_us_read_bcast} µs (read) and {t.write_cpu_us_unread_bcast} µs "
            f"(new) with BCAST. Through the product's store: a login's session write {t.login_cpu_us} µs, a "
            f"renewal {t.renewal_cpu_us} µs ({t.invalidations_per_renewal} invalidations), a revocation "
            f"{t.revocation_cpu_us} µs.",
        ]
    if results.capacity:
        out += ["", f"Capacity ({results.topology} topology), projected from CPU per request:", ""]
        out += render(CAPACITY_COLUMNS, results.capacity)
    if d := results.redis_drive:
        out += [
            "",
            f"Check: the cluster's Redis driven with the replicas' read pattern alone (pipelined `GETEX`, "
            f"{d.processes} client processes, batches of {d.batch}): {d.ops_per_s:,.0f} reads/s using "
            f"{d.redis_cpu_share:.0%} of a core, that is {d.ops_per_redis_core_s:,.0f} reads per Redis core-second.",
        ]
    if sized := results.cluster:
        logins = sum(x.sessions for x in sized.shards)
        per_request = round(sized.read_us + sized.login_us / sized.reads_per_login, 2)
        driven = sum(x.drive_ops_per_s for x in sized.shards)
        projected = [round(1e6 / x.read_cpu_us) for x in sized.shards if x.read_cpu_us]
        out += [
            "",
            f"Redis Cluster, each shard measured through the product's store: {logins:,} "
            "logins spread by their users' slot tags (each a session, its index entry and a `WAIT` for the "
            "shard's replica), every session read once as the replicas read; then the replicas' read pattern "
            "alone driven at all the shards at once:",
            "",
            *render(SHARD_COLUMNS, sized.shards),
            "",
            f"Check: {driven:,.0f} reads/s from the {len(sized.shards)} shards together; the reads per core-second "
            f"each shard's store reads project (1e6 / its CPU µs per read: {', '.join(f'{p:,}' for p in projected)})"
            " "
            "against those driven above.",
            "",
            f"Sizing rule, for {sized.reads_per_login} authenticated requests per login: a request costs "
            f"{per_request} µs of Redis CPU ({sized.read_us} µs per read as the wrk runs measured it, plus a login's "
            f"{sized.login_us} µs over {sized.reads_per_login} requests); one API replica serves "
            f"{sized.replica_rps:,.0f} requests/s on a core; a session takes {sized.bytes_per_session:,.0f} bytes. "
            f"A primary runs commands on one core (budget {sized.shard_core_share:.0%} of it) and holds "
            f"{sized.shard_memory_gib:g} GiB: shards = "
            "max(ceil(S x bytes per session / memory), ceil(R x requests/s x µs per request / (budget x 1e6))), "
            "each with a replica of its own (as much memory again, on another machine).",
            "",
            *render(PROJECTION_COLUMNS, sized.projections),
        ]
    return [*out, "", "![bench](bench.png)", ""]


def write(results: BenchResults, out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results.to_json(), indent=2))
    text = lines(results)
    (out / "bench.md").write_text("\n".join(text))
    chart(results, out)
    return text


def chart(results: BenchResults, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = results.modes
    names = [m.mode for m in modes]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    med = [m.ratio.median for m in modes]
    low = [m.ratio.median - m.ratio.min for m in modes]
    high = [m.ratio.max - m.ratio.median for m in modes]
    ax1.bar(names, med, yerr=[low, high], capsize=4)
    ax1.axhline(1.0, color="grey", linestyle="--", label="no-auth baseline")
    if c := results.control:
        ax1.axhspan(c.min, c.max, color="grey", alpha=0.15, label="noise: baseline vs itself")
    ax1.set_ylabel("/api/me req/s ÷ /api/whoami req/s")
    ax1.set_title("Throughput ratio per mode (median, min-max)")
    ax1.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax1.legend()
    bottom = [0.0] * len(modes)
    for proc in ("api", "nginx", "redis"):
        values = [m.me.cpu_us_per_request[proc] for m in modes]
        ax2.bar(names, values, bottom=bottom, label=proc)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax2.set_ylabel("server CPU per request (µs)")
    ax2.set_title("CPU per /api/me request, by process")
    ax2.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out / "bench.png", dpi=110)
    plt.close(fig)
