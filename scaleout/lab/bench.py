"""`scaleout bench`: what each auth mode costs per request, as a ratio to a no-auth baseline in the same run.

Each mode gets a cluster with one replica behind nginx. `wrk` drives `GET /api/whoami` (no auth: the
baseline) and `GET /api/me` (with a cookie or bearer token of K pre-logged-in users) in interleaved pairs
(A B A B …); the report gives the median of the per-pair throughput ratios, latency percentiles, errors,
and server CPU per request for every process (from /proc/<pid>/stat).
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from scaleout.lab.load import make_users
from scaleout.lab.runner import Cluster, free_ports, isolated_settings, nginx_workers, port_is_free, require_program

CLK_TCK = os.sysconf("SC_CLK_TCK")

MODES: dict[str, dict[str, object]] = {
    "session/memory": {"auth_mode": "session", "session_store": "memory"},
    "session/redis": {"auth_mode": "session", "session_store": "redis"},
    "jwt RS256": {"auth_mode": "jwt", "jwt_alg": "RS256"},
    "jwt ES256": {"auth_mode": "jwt", "jwt_alg": "ES256"},
    "jwt HS256": {"auth_mode": "jwt", "jwt_alg": "HS256"},
    "jwt RS256 + denylist": {"auth_mode": "jwt", "jwt_alg": "RS256", "jwt_revocation": "denylist"},
}
QUICK_MODES = ("session/redis", "jwt RS256")

_LUA = """
local creds = {%(creds)s}
local requests = {}
local i = 0
-- Every distinct request is formatted once per thread: wrk's own CPU per request stays small and the
-- same for both sides of a pair (it shares the 2 vCPUs with the processes being measured).
init = function(args)
  if #creds == 0 then
    requests[1] = wrk.format("GET", "%(path)s")
  else
    for k, c in ipairs(creds) do requests[k] = wrk.format("GET", "%(path)s", {["%(header)s"] = c}) end
  end
end
request = function()
  i = i + 1
  return requests[(i %% #requests) + 1]
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%%d,"duration_us":%%d,"errors":%%d,"non2xx":%%d,"p50_us":%%d,"p99_us":%%d,"p999_us":%%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"""


@dataclass
class Target:
    url: str
    path: str
    header: str = ""
    creds: tuple[str, ...] = ()


def _lua(target: Target, directory: Path) -> Path:
    creds = ", ".join(json.dumps(c) for c in target.creds)
    script = directory / f"wrk-{abs(hash((target.path, target.header, target.creds)))}.lua"
    script.write_text(_LUA % {"creds": creds, "header": target.header, "path": target.path})
    return script


def _cpu_ticks(pids: list[int]) -> dict[int, int]:
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, IndexError):
            out[pid] = 0
    return out


def wrk_run(target: Target, seconds: float, processes: dict[str, list[int]], workdir: Path) -> dict[str, Any]:
    script = _lua(target, workdir)
    pids = [p for group in processes.values() for p in group]
    before = _cpu_ticks(pids)
    client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.run(
        [
            require_program("wrk"),
            "-t1",
            "-c32",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            target.url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    after = _cpu_ticks(pids)
    client_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
    if run.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed: {run.stdout[-500:]} {run.stderr[-500:]}")
    r = json.loads(line.removeprefix("RESULT "))
    n = max(1, r["requests"])
    cpu = {
        name: round(sum(after[p] - before[p] for p in group) / CLK_TCK / n * 1e6, 1)
        for name, group in processes.items()
    }
    # wrk is the only child that exits during a run; it shares the machine with the servers.
    client = (client_after.ru_utime + client_after.ru_stime) - (client_before.ru_utime + client_before.ru_stime)
    cpu["wrk (client)"] = round(client / n * 1e6, 1)
    return {
        "rps": round(r["requests"] / (r["duration_us"] / 1e6), 1),
        "requests": r["requests"],
        "errors": r["errors"] + r["non2xx"],
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "p999_ms": r["p999_us"] / 1000,
        "cpu_us_per_request": cpu,
    }


def _processes(cluster: Cluster) -> dict[str, list[int]]:
    s = cluster.services
    nginx = s["nginx"].pid or 0
    return {
        "nginx": [nginx, *nginx_workers(nginx)],
        "api": [s["api-1"].pid or 0],
        "redis": [s["redis"].pid or 0],
    }


def _credentials(cluster: Cluster, users: int) -> tuple[str, tuple[str, ...]]:
    people = make_users(cluster.settings.public_url, users)
    try:
        if people[0].token:
            return "Authorization", tuple(f"Bearer {u.token}" for u in people)
        return "Cookie", tuple(f"sid={u.client.cookies['sid']}" for u in people)
    finally:
        for u in people:
            u.close()


def pairs(
    a: Target, b: Target, n: int, seconds: float, procs: dict[str, list[int]], workdir: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[float]]:
    """n pairs in A B, B A, A B … order, so that whatever favours the first (or second) run of a pair
    favours both sides equally; returns both sides' runs and the per-pair ratios b/a."""
    runs_a, runs_b = [], []
    for i in range(n):
        if i % 2:
            runs_b.append(wrk_run(b, seconds, procs, workdir))
            runs_a.append(wrk_run(a, seconds, procs, workdir))
        else:
            runs_a.append(wrk_run(a, seconds, procs, workdir))
            runs_b.append(wrk_run(b, seconds, procs, workdir))
    ratios = [rb["rps"] / ra["rps"] for ra, rb in zip(runs_a, runs_b, strict=True)]
    return runs_a, runs_b, ratios


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "rps": round(statistics.median(r["rps"] for r in runs), 1),
        "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 3),
        "p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 3),
        "p999_ms": round(statistics.median(r["p999_ms"] for r in runs), 3),
        "errors": sum(r["errors"] for r in runs),
        "requests": sum(r["requests"] for r in runs),
        "cpu_us_per_request": {
            k: round(statistics.median(r["cpu_us_per_request"][k] for r in runs), 1)
            for k in runs[0]["cpu_us_per_request"]
        },
    }


REFERENCE_APP = textwrap.dedent(
    '''
    """FastAPI's tutorial pattern: OAuth2PasswordBearer and jwt.decode with a key string on every request."""
    from typing import Annotated

    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.security import OAuth2PasswordBearer
    from jose import JWTError, jwt

    PUBLIC_KEY = open(__file__.replace(".py", ".pem")).read()
    oauth2_scheme = OAuth2PasswordBearer(tokenUrl="token")
    app = FastAPI()


    async def get_current_user(token: Annotated[str, Depends(oauth2_scheme)]) -> str:
        try:
            payload = jwt.decode(token, PUBLIC_KEY, algorithms=["RS256"], audience="scaleout-api")
        except JWTError:
            raise HTTPException(status_code=401, detail="Could not validate credentials")
        return payload["sub"]


    @app.get("/api/me")
    async def me(user: Annotated[str, Depends(get_current_user)]) -> dict[str, str]:
        return {"username": user}
    '''
)


@contextmanager
def reference_app(workdir: Path, public_pem: str) -> Iterator[str]:
    (port,), _ = free_ports("127.0.0.1", 1)
    (workdir / "reference_app.py").write_text(REFERENCE_APP)
    (workdir / "reference_app.pem").write_text(public_pem)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "reference_app:app",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while port_is_free("127.0.0.1", port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("reference app did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def login_cost(cluster: Cluster, n: int) -> dict[str, Any]:
    from scaleout.core.passwords import Passwords

    url = cluster.settings.public_url
    people = make_users(url, 1)
    name = people[0].name
    people[0].close()
    times = []
    with httpx.Client(base_url=url, timeout=10) as c:
        for _ in range(n):
            start = time.perf_counter()
            assert c.post("/api/login", json={"username": name, "password": "demo password 1"}).status_code == 200
            times.append(time.perf_counter() - start)
    return {
        "logins_per_s_sequential": round(n / sum(times), 1),
        "p50_ms": round(statistics.median(times) * 1000, 2),
        "argon2": Passwords(cluster.settings).parameters,
    }


def signing_cost(workdir: Path) -> dict[str, float]:
    from scaleout.core.config import JWTAlg
    from scaleout.core.keys import KeyRing, hs256_key
    from scaleout.core.tokens import TokenIssuer, TokenKind

    issuer = TokenIssuer("i", "a", 60, 60)
    out = {}
    for alg in ("RS256", "ES256", "HS256"):
        key = (
            hs256_key(secrets.token_urlsafe(32))
            if alg == "HS256"
            else (KeyRing(workdir / f"keys-{alg}", JWTAlg(alg), 60).signer)
        )
        start = time.perf_counter()
        for _ in range(200):
            issuer.issue(key, TokenKind.access, "uid-alice", "alice", "f" * 22)
        out[alg] = round((time.perf_counter() - start) / 200 * 1000, 3)
    return out


def _ratio_summary(ratios: list[float]) -> dict[str, float]:
    return {
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
    }


def run(quick: bool, say: Callable[[str], None] = print, only: list[str] | None = None) -> dict[str, Any]:
    # Many short pairs on several fresh clusters per mode, rather than a few long runs on one: on a shared
    # 2-vCPU machine the CPU cost of the very same request drifts by +-20% within seconds (even with the
    # replica alone on a pinned CPU), and one replica process can run 10-15% slower than the next for its
    # whole life. So the two runs of a pair are close in time, and the pairs of a mode come from 3 processes.
    seconds, n_pairs, clusters, users = (1.0, 1, 1, 8) if quick else (1.0, 7, 3, 32)
    modes = tuple(only) if only else QUICK_MODES if quick else tuple(MODES)
    results: dict[str, Any] = {
        "settings": {
            "seconds": seconds,
            "pairs": n_pairs * clusters,
            "clusters": clusters,
            "users": users,
            "wrk": "-t1 -c32",
        },
    }
    control: list[float] = []
    with tempfile.TemporaryDirectory(prefix="scaleout-bench-") as tmp:
        workdir = Path(tmp)
        for mode in modes:
            runs_a: list[dict[str, Any]] = []
            runs_b: list[dict[str, Any]] = []
            ratios: list[float] = []
            ref_runs: list[dict[str, Any]] = []
            our_runs: list[dict[str, Any]] = []
            ref_ratios: list[float] = []
            for k in range(clusters):
                say(f"bench {mode} ({k + 1}/{clusters})")
                slug = mode.replace(" ", "_").replace("/", "-")
                cluster = Cluster(
                    isolated_settings(workdir / f"{slug}-{k}", replicas=1, throttle_ip_max=1_000_000, **MODES[mode])
                )
                cluster.up()
                try:
                    header, creds = _credentials(cluster, users)
                    base = Target(cluster.settings.public_url, "/api/whoami")
                    me = Target(cluster.settings.public_url, "/api/me", header, creds)
                    procs = _processes(cluster)
                    wrk_run(base, 0.5, procs, workdir)  # warm-up
                    wrk_run(me, 0.5, procs, workdir)
                    if not quick and mode == modes[0]:
                        # The same endpoint against itself: how far from 1.0 a ratio strays by noise alone.
                        control += pairs(base, base, n_pairs, seconds, procs, workdir)[2]
                    a, b, r = pairs(base, me, n_pairs, seconds, procs, workdir)
                    runs_a, runs_b, ratios = runs_a + a, runs_b + b, ratios + r
                    if mode == "jwt RS256":
                        if k == 0:
                            results["login"] = login_cost(cluster, 5 if quick else 20)
                        port = cluster.settings.api_port("api-1")
                        direct = Target(f"http://127.0.0.1:{port}", "/api/me", header, creds)
                        jwks = httpx.get(f"{cluster.settings.public_url}/auth/.well-known/jwks.json").json()
                        from jose import jwk as jose_jwk

                        public_pem = jose_jwk.construct(jwks["keys"][0], "RS256").to_pem().decode()
                        with reference_app(workdir, public_pem) as ref_url:
                            ref = Target(ref_url, "/api/me", header, creds)
                            a, b, r = pairs(ref, direct, n_pairs, seconds, procs, workdir)
                        ref_runs, our_runs, ref_ratios = ref_runs + a, our_runs + b, ref_ratios + r
                finally:
                    cluster.down()
            results[mode] = {"baseline": _summary(runs_a), "me": _summary(runs_b), **_ratio_summary(ratios)}
            # The price of the check itself: the replica's CPU per /api/me beyond the no-auth request.
            cpu_me, cpu_base = (results[mode][side]["cpu_us_per_request"]["api"] for side in ("me", "baseline"))
            results[mode]["auth_check_us"] = round(cpu_me - cpu_base, 1)
            if control and "control" not in results:
                results["control"] = {"mode": mode, **_ratio_summary(control)}
            if ref_runs:
                reference = _summary(ref_runs)
                results["reference"] = {
                    "reference_rps": reference["rps"],
                    "ours_direct_rps": _summary(our_runs)["rps"],
                    "ours_over_reference": round(statistics.median(ref_ratios), 3),
                    "reference_errors": reference["errors"],
                }
        results["signing_ms"] = signing_cost(workdir)
    return results


def write(results: dict[str, Any], out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(results, indent=2))
    modes = [m for m in MODES if m in results]
    lines = [
        "# scaleout bench",
        "",
        f"wrk {results['settings']['wrk']}, {results['settings']['seconds']} s per run, "
        f"{results['settings']['pairs']} interleaved pairs per mode (A B, B A, ...) from "
        f"{results['settings']['clusters']} fresh clusters, each one replica behind nginx.",
        "",
        "| mode | /api/me req/s | /api/whoami req/s | ratio (median) | min-max | p50 ms | p99 ms | p99.9 ms "
        "| errors | CPU µs/req (api, nginx, redis; wrk) | auth check µs/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in modes:
        r = results[m]
        cpu = r["me"]["cpu_us_per_request"]
        me, errors = r["me"], r["me"]["errors"] + r["baseline"]["errors"]
        lines.append(
            f"| {m} | {me['rps']} | {r['baseline']['rps']} | {r['ratio_median']} | {r['ratio_min']}-{r['ratio_max']} "
            f"| {me['p50_ms']} | {me['p99_ms']} | {me['p999_ms']} | {errors} "
            f"| {cpu['api']}, {cpu['nginx']}, {cpu['redis']}; {cpu['wrk (client)']} | {r['auth_check_us']} |"
        )
    if control := results.get("control"):
        lines += [
            "",
            f"Noise control ({control['mode']} cluster): /api/whoami against itself, same pairs: median "
            f"{control['ratio_median']}, min-max {control['ratio_min']}-{control['ratio_max']}.",
        ]
    if ref := results.get("reference"):
        lines += [
            "",
            f"Reference app (FastAPI tutorial pattern, RS256, direct): {ref['reference_rps']} req/s; "
            f"ours direct: {ref['ours_direct_rps']} req/s; ours/reference = {ref['ours_over_reference']}.",
        ]
    if login := results.get("login"):
        lines += [
            "",
            f"Login: {login['logins_per_s_sequential']} logins/s sequential, p50 {login['p50_ms']} ms, "
            f"Argon2id {login['argon2']}. Signing (prepared keys): {results['signing_ms']} ms per token.",
        ]
    lines += ["", "![bench](bench.png)", ""]
    (out / "bench.md").write_text("\n".join(lines))
    _chart(results, modes, out)
    return lines


def _chart(results: dict[str, Any], modes: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    med = [results[m]["ratio_median"] for m in modes]
    low = [results[m]["ratio_median"] - results[m]["ratio_min"] for m in modes]
    high = [results[m]["ratio_max"] - results[m]["ratio_median"] for m in modes]
    ax1.bar(modes, med, yerr=[low, high], capsize=4)
    ax1.axhline(1.0, color="grey", linestyle="--", label="no-auth baseline")
    if control := results.get("control"):
        ax1.axhspan(
            control["ratio_min"], control["ratio_max"], color="grey", alpha=0.15, label="noise: baseline vs itself"
        )
    ax1.set_ylabel("/api/me req/s ÷ /api/whoami req/s")
    ax1.set_title("Throughput ratio per mode (median, min-max)")
    ax1.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax1.legend()
    bottom = [0.0] * len(modes)
    for proc in ("api", "nginx", "redis"):
        values = [results[m]["me"]["cpu_us_per_request"][proc] for m in modes]
        ax2.bar(modes, values, bottom=bottom, label=proc)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax2.set_ylabel("server CPU per request (µs)")
    ax2.set_title("CPU per /api/me request, by process")
    ax2.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(out / "bench.png", dpi=110)
    plt.close(fig)
