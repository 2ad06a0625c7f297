"""`scaleout`: the command line behind the Makefile (`python -m scaleout …` works too)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from scaleout.core.config import (
    AuthMode,
    JWTAlg,
    JWTRevocation,
    LBMode,
    RedisPersistence,
    RedisTopology,
    SessionCache,
    SessionStore,
    Settings,
    explain,
    get_settings,
)
from scaleout.lab.drivers.base import ClusterDriver, ClusterError
from scaleout.lab.drivers.local import Cluster
from scaleout.lab.table import markdown

if TYPE_CHECKING:
    from scaleout.lab.drivers.compose import Stack
    from scaleout.lab.drivers.swarm import Swarm

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
console = Console(highlight=False, soft_wrap=True)  # a line is never cut at 80 columns without a terminal
err = Console(stderr=True, highlight=False)


class Kind(StrEnum):
    auth = "auth"
    api = "api"


T = TypeVar("T")


def _attempt(verb: Callable[[], T]) -> T:
    """Run one verb; a cluster's or a stack's refusal is one red line and exit 1, not a traceback."""
    try:
        return verb()
    except ValidationError as exc:
        _fail(explain(exc), status=2)
        raise
    except ClusterError as exc:  # every driver's refusal, the container runtimes' included
        _fail(exc)
        raise


def _fail(exc: Exception | str, status: int = 1) -> None:
    err.print(f"[red]error:[/] {exc}", soft_wrap=True)
    raise typer.Exit(status)


def _settings() -> Settings:
    """The settings from the environment; a wrong value is one line naming the variable, and exit 2."""
    return _attempt(get_settings)


def _modes(s: Settings) -> str:
    return (
        f"AUTH_MODE={s.auth_mode} SESSION_STORE={s.session_store} LB_MODE={s.lb_mode} "
        f"JWT_REVOCATION={s.jwt_revocation} JWT_ALG={s.jwt_alg} REPLICAS={s.replicas} "
        f"REDIS_TOPOLOGY={s.redis_topology} REDIS_PERSISTENCE={s.redis_persistence} SESSION_CACHE={s.session_cache}"
    )


def _cluster() -> Cluster:
    return _attempt(lambda: Cluster.load(_settings().cluster_dir))


@app.command()
def up(
    auth: Annotated[AuthMode | None, typer.Option(help="AUTH_MODE")] = None,
    store: Annotated[SessionStore | None, typer.Option(help="SESSION_STORE")] = None,
    lb: Annotated[LBMode | None, typer.Option(help="LB_MODE")] = None,
    revocation: Annotated[JWTRevocation | None, typer.Option(help="JWT_REVOCATION")] = None,
    alg: Annotated[JWTAlg | None, typer.Option(help="JWT_ALG")] = None,
    replicas: Annotated[int | None, typer.Option(min=1, max=9, help="REPLICAS")] = None,
    topology: Annotated[RedisTopology | None, typer.Option(help="REDIS_TOPOLOGY")] = None,
    persistence: Annotated[RedisPersistence | None, typer.Option(help="REDIS_PERSISTENCE")] = None,
    cache: Annotated[SessionCache | None, typer.Option(help="SESSION_CACHE")] = None,
) -> None:
    """Start the local cluster in the background; returns once every service is healthy."""
    overrides = {
        k: v
        for k, v in {
            "auth_mode": auth,
            "session_store": store,
            "lb_mode": lb,
            "jwt_revocation": revocation,
            "jwt_alg": alg,
            "replicas": replicas,
            "redis_topology": topology,
            "redis_persistence": persistence,
            "session_cache": cache,
        }.items()
        if v is not None
    }
    settings = _settings().model_copy(update=overrides)
    settings = Settings(**settings.model_dump(), jwt_secret=settings.jwt_secret)  # re-validate the combination
    cluster = Cluster(settings)
    _attempt(lambda: cluster.up(progress=lambda line: console.print(f"  {line}")))
    s = cluster.settings
    console.print(f"cluster up: [bold]{s.public_url}[/]  {_modes(s)}")
    from scaleout.lab.panel.app import panel_url

    console.print(f"control panel (after `make lab`): {panel_url(s)}", soft_wrap=True)


@app.command()
def down() -> None:
    """Stop everything `up` started (and nothing else)."""
    settings = _settings()
    if not (settings.cluster_dir / "state.json").exists():
        console.print("no cluster recorded; nothing to stop")
        return
    stopped = _cluster().down()
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")


def _show_status(cluster: ClusterDriver) -> None:
    """The same view of any driver's cluster: each service, then the modes it runs and its primary."""
    _table(
        ["service", "pid", "address", "healthy", "state"],
        [[r.service, str(r.pid or "-"), r.address, "yes" if r.healthy else "NO", r.state] for r in cluster.status()],
    )
    s = cluster.settings
    console.print(f"{_modes(s)}  url={cluster.public_url}")
    for target, now in cluster.faults().items():
        console.print(f"fault between the services and {target}: {now.describe()}")
    if s.sentinel:
        console.print(f"Redis primary, as the Sentinels say: {cluster.primary() or 'none known (failover under way?)'}")
    if s.cluster:
        shards = cluster.shards()
        for shard in shards:
            console.print(shard.describe())
        if not shards:
            console.print("Redis Cluster: no node answers")


@app.command()
def status() -> None:
    """Each service's pid, address and health; the current modes."""
    _show_status(_cluster())


@app.command()
def lb(mode: LBMode) -> None:
    """Switch nginx's balancing live: `nginx -t`, then a graceful reload."""
    _attempt(lambda: _cluster().lb(mode))
    console.print(f"nginx now balances with {mode}")


@app.command()
def stop(
    service: str,
    kill: Annotated[bool, typer.Option(help="SIGKILL instead of SIGTERM (a crash, not a shutdown)")] = False,
) -> None:
    """Fault injection: stop one service (api-N, auth, redis, nginx; with Sentinels `redis` is the primary,
    on a Redis Cluster `redis-shard-N` is that shard's primary) of the running cluster."""
    stopped = _attempt(lambda: _cluster().stop(service, kill=kill))
    console.print(f"stopped {stopped}" if stopped == service else f"stopped {stopped} ({service})")


@app.command()
def start(service: str) -> None:
    """Start a service stopped with `stop` again, with the same command and settings."""
    started = _attempt(lambda: _cluster().start(service))
    console.print(f"started {started}" if started == service else f"started {started} ({service})")


FaultTarget = Annotated[str, typer.Argument(help="redis | auth")]
FaultKind = Annotated[str, typer.Argument(help="latency | jitter | bandwidth | blackhole | reset | clear")]
FaultValue = Annotated[str | None, typer.Argument(help="500ms, 2s (latency, jitter); 10kb (bandwidth, per second)")]


def _fault(driver: Callable[[], ClusterDriver], target: str, kind: str, value: str | None) -> None:
    from scaleout.lab.faults import TARGETS, FaultError

    if target not in TARGETS:
        _fail(f"TARGET={target!r}: one of {', '.join(TARGETS)}", status=2)
    try:
        now = _attempt(lambda: driver().fault(target, kind, value or None))
    except FaultError as exc:
        _fail(exc, status=2)
        raise
    console.print(f"fault between the services and {target}: {now.describe()}")


@app.command()
def fault(target: FaultTarget, kind: FaultKind, value: FaultValue = None) -> None:
    """Fault injection between the services and Redis, or the replicas and the auth service, while the
    cluster runs: `scaleout fault redis latency 500ms`, `scaleout fault redis blackhole`, `... clear`."""
    _fault(_cluster, target, kind, value)


@app.command("rotate-keys")
def rotate_keys() -> None:
    """Give the auth service a new signing key (old tokens keep verifying until they expire)."""
    kid = _attempt(lambda: _cluster().rotate_keys())
    console.print(f"auth service now signs with {kid}")


@app.command()
def lab(
    foreground: Annotated[bool, typer.Option(help="serve in this process instead of in the background")] = False,
) -> None:
    """The browser control panel of the running cluster, on 127.0.0.1:LAB_PORT (8090)."""
    from scaleout.lab.panel.app import panel_url, serve

    if foreground:
        serve(_settings().cluster_dir)
        return
    cluster = _cluster()
    _attempt(lambda: cluster.start_panel())
    console.print(f"control panel: {panel_url(cluster.settings)}", soft_wrap=True)


compose_app = typer.Typer(no_args_is_help=True, help="The same cluster in containers (docker compose).")
app.add_typer(compose_app, name="compose")


def _stack(attach: bool = True) -> Stack:
    """`compose up` brings the stack to this command's settings; every other verb acts on the stack as it runs."""
    from scaleout.lab.drivers.compose import Stack

    say: Callable[[str], None] = lambda line: console.print(f"  {line}")  # noqa: E731
    settings = _settings()
    return _attempt(lambda: Stack.attach(settings, say=say)) if attach else Stack(settings, say=say)


@compose_app.command("up")
def compose_up() -> None:
    """Start the container stack (`docker compose up -d --build --wait`); returns once every service is healthy."""
    stack = _stack(attach=False)
    _attempt(stack.up)
    console.print(f"compose stack up: [bold]{stack.public_url}[/]")


@compose_app.command("down")
def compose_down() -> None:
    """Remove the stack's containers, networks and volumes (nothing else)."""
    from scaleout.lab.drivers.compose import Stack
    from scaleout.lab.engine import engine_answers

    stack = Stack(_settings())
    if not engine_answers() or _attempt(stack.running_settings) is None:
        console.print(f"no compose stack {stack.project!r}; nothing to remove")
        return
    _attempt(lambda: _stack().down())
    console.print("compose stack removed")


@compose_app.command("status")
def compose_status() -> None:
    """Each container's state and health, and the modes the stack runs."""
    _show_status(_stack())


@compose_app.command("lb")
def compose_lb(mode: LBMode) -> None:
    """Re-render the nginx config in place and reload nginx (config test first)."""
    _attempt(lambda: _stack().lb(str(mode)))
    console.print(f"nginx in the stack now balances with {mode}")


@compose_app.command("stop")
def compose_stop(service: str) -> None:
    """Fault injection: kill one container (api-N, auth, redis, nginx; with Sentinels `redis` is the primary)."""
    killed = _attempt(lambda: _stack().stop(service))
    console.print(f"killed {killed}")


@compose_app.command("start")
def compose_start(service: str) -> None:
    """Start a stopped container again and wait until it is healthy."""
    started = _attempt(lambda: _stack().start(service))
    console.print(f"started {started}")


@compose_app.command("fault")
def compose_fault(target: FaultTarget, kind: FaultKind, value: FaultValue = None) -> None:
    """Fault injection in the stack, through its fault proxy containers (as `scaleout fault`)."""
    _fault(_stack, target, kind, value)


swarm_app = typer.Typer(no_args_is_help=True, help="The same cluster as a Docker Swarm stack (docker stack deploy).")
app.add_typer(swarm_app, name="swarm")


def _swarm(attach: bool = True) -> Swarm:
    """`swarm up` brings the stack to this command's settings; every other verb acts on the stack as it runs."""
    from scaleout.lab.drivers.swarm import Swarm

    say: Callable[[str], None] = lambda line: console.print(f"  {line}")  # noqa: E731
    settings = _settings()
    if attach:
        return _attempt(lambda: Swarm.attach(settings, say=say))
    nodes = os.environ.get("SWARM_NODES", "1")
    if nodes not in ("1", "2", "3"):
        _fail(f"SWARM_NODES={nodes!r}: 1 (this engine), 2 or 3 (with node containers)", status=2)
    return Swarm(settings, say=say, nodes=int(nodes))


@swarm_app.command("up")
def swarm_up() -> None:
    """Deploy the stack (a single-node swarm is initialised when the engine is in none); returns once every
    service runs and nginx reaches every replica."""
    swarm = _swarm(attach=False)
    _attempt(swarm.up)
    console.print(f"swarm stack up: [bold]{swarm.public_url}[/]")


@swarm_app.command("down")
def swarm_down() -> None:
    """Remove the stack, its secrets and volume; leave the swarm only if `swarm up` created it."""
    from scaleout.lab.drivers.swarm import Swarm

    removed = _attempt(lambda: Swarm(_settings()).down())
    console.print(f"swarm stack removed ({', '.join(removed) or 'nothing was running'})")


@swarm_app.command("status")
def swarm_status() -> None:
    """Each task (replica@node), its state, and the modes the stack runs."""
    _show_status(_swarm())


@swarm_app.command("lb")
def swarm_lb(mode: LBMode) -> None:
    """Switch nginx's balancing live (re-rendered, config test, graceful reload)."""
    _attempt(lambda: _swarm().lb(str(mode)))
    console.print(f"nginx in the swarm now balances with {mode}")


@swarm_app.command("stop")
def swarm_stop(service: str) -> None:
    """Fault injection: kill a replica's task (api-N; the Swarm replaces it), or scale redis, auth or nginx to 0."""
    console.print(f"stopped {_attempt(lambda: _swarm().stop(service))}")


@swarm_app.command("start")
def swarm_start(service: str) -> None:
    """Bring a stopped service back and wait until nginx reaches every replica."""
    console.print(f"started {_attempt(lambda: _swarm().start(service))}")


@swarm_app.command("scale")
def swarm_scale(replicas: int) -> None:
    """The api service to N replicas (1 to 9); returns once nginx reaches exactly those."""
    swarm = _swarm()
    _attempt(lambda: swarm.scale(replicas))
    console.print(f"api now runs {replicas} replicas: {', '.join(swarm.settings.replica_names)}")


k8s_app = typer.Typer(no_args_is_help=True, help="Kubernetes manifests (deploy/k8s), rendered and validated offline.")
app.add_typer(k8s_app, name="k8s")


@k8s_app.command("render")
def k8s_render(
    out: Annotated[Path | None, typer.Option(help="where the overlay and manifests.yaml go")] = None,
) -> None:
    """The manifests for the current mode variables: an overlay (base, components, generated secrets) and
    its output, `manifests.yaml`, ready for `kubectl apply -f` (or `kubectl apply -k` on the overlay)."""
    from scaleout.lab import k8s

    settings = _settings()
    chosen = _attempt(lambda: k8s.components(settings))
    where = out or settings.cluster_dir / "k8s" / ("-".join(chosen) or "base")
    manifests = _attempt(lambda: k8s.render(settings, where))
    console.print(f"wrote {manifests} (overlay {where}; its secrets are in {where / 'secrets'}, owner-only)")


@k8s_app.command("check")
def k8s_check(
    workdir: Annotated[Path | None, typer.Option(help="where the renders go (a temporary directory)")] = None,
) -> None:
    """Every combination of the modes rendered, validated strictly against the pinned Kubernetes versions'
    schemas, and held to the pod rules; exit 1 when any breaks."""
    import tempfile

    from scaleout.lab import k8s

    _settings()
    with tempfile.TemporaryDirectory(prefix="scaleout-k8s-") as tmp:
        found = _attempt(lambda: k8s.check(workdir or Path(tmp)))
    _table(["combination", "problems"], [[name, "; ".join(p) or "none"] for name, p in found.items()])
    bad = sum(bool(p) for p in found.values())
    console.print(
        f"{len(found)} combinations, Kubernetes {' and '.join(k8s.KUBERNETES_VERSIONS)} (strict): "
        f"{'all valid' if not bad else f'{bad} with problems'}"
    )
    if bad:
        raise typer.Exit(1)


@app.command("init-secrets")
def init_secrets() -> None:
    """Create the cluster's secrets (Redis ACL and password, session key, HS256 secret) in SECRETS_DIR."""
    from services.serve import main

    raise typer.Exit(main(["secrets"]))


@app.command("revoke-key")
def revoke_key(kid: str) -> None:
    """Distrust a compromised signing key on every replica within seconds (no restarts)."""
    _attempt(lambda: _cluster().revoke_key(kid))
    console.print(f"key {kid} revoked; replicas drop it within {_settings().jwks_refresh_interval:g} s")


@app.command()
def serve(kind: Kind) -> None:
    """Run one service in the foreground (the same as `python -m services.serve KIND`)."""
    from services.serve import serve as serve_service

    serve_service(str(kind))


@app.command("render-nginx")
def render_nginx(
    out: Annotated[Path, typer.Option(help="where to write the config ('-' for stdout)")] = Path("-"),
    target: Annotated[str, typer.Option(help="local, compose or k8s")] = "compose",
) -> None:
    """Render nginx/nginx.conf.j2 with the current settings (compose's nginx-config service runs this)."""
    from scaleout.lab import nginx

    settings = _settings()
    prefix = settings.cluster_dir / "nginx"
    targets: dict[str, nginx.Target] = {"local": "local", "compose": "compose", "k8s": "k8s"}
    if target not in targets:
        _fail(f"unknown target {target!r}; choose local, compose or k8s", status=2)
    text = nginx.render(settings, targets[target], prefix=prefix)
    if str(out) == "-":
        sys.stdout.write(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        console.print(f"wrote {out} (LB_MODE={settings.lb_mode})")


def _interactive() -> bool:
    return sys.stdout.isatty() and os.environ.get("CI", "").lower() not in ("1", "true")


def _table(titles: list[str], rows: list[list[str]], title: str | None = None) -> None:
    """A table on a terminal (wrapping long cells to fit 120 columns); elsewhere (a file, a pipe, CI) the
    same table as plain Markdown, every cell whole, whatever the width."""
    if not _interactive():
        if title:
            print(f"\n{title}\n")
        print("\n".join(markdown(titles, rows)), flush=True)
        return
    table = Table(*titles, title=title)
    for row in rows:
        table.add_row(*row)
    Console(width=min(console.width, 120), highlight=False).print(table)


@app.command()
def bench(
    quick: Annotated[bool, typer.Option(help="a smoke run of seconds (two modes, one pair)")] = False,
    mode: Annotated[list[str] | None, typer.Option(help="only this mode (repeatable), e.g. 'session/redis'")] = None,
    out: Annotated[Path, typer.Option(help="where to write bench.md, bench.json and bench.png")] = Path("reports"),
    topology: Annotated[
        RedisTopology, typer.Option(help="REDIS_TOPOLOGY of the measured clusters")
    ] = RedisTopology.single,
) -> None:
    """Measure what each auth mode costs per request against the no-auth baseline, in one run."""
    _settings()  # each measured cluster sets its own modes, but a mistyped variable is still refused
    from scaleout.lab import bench as bench_mod

    unknown = [m for m in mode or [] if m not in bench_mod.MODES]
    if unknown:
        _fail(ValueError(f"unknown mode {unknown}; choose from {', '.join(bench_mod.MODES)}"))
    from scaleout.lab.bench.output import TERMINAL_COLUMNS

    results = bench_mod.run(quick, say=lambda line: print(line, flush=True), only=mode, topology=str(topology))
    lines = bench_mod.write(results, out)
    _table([c.title for c in TERMINAL_COLUMNS], [[c.cell(m) for c in TERMINAL_COLUMNS] for m in results.modes])
    for line in lines:
        if line.startswith(("Noise control", "Login:", "Session MAC", "WAIT on a login", "Check: the cluster")):
            console.print(line)
    for p in results.peers:
        console.print(f"{p.peer}: ours ÷ peer = {p.ours_over_peer.median} ({p.ours_rps} vs {p.peer_rps} req/s)")
    console.print(f"wrote {out / 'bench.md'}, {out / 'bench.json'} and {out / 'bench.png'}")


@app.command()
def demo(
    quick: Annotated[bool, typer.Option(help="small sizes, for tests (under a minute)")] = False,
    scenario: Annotated[list[str] | None, typer.Option(help="run only this scenario (repeatable)")] = None,
    users: Annotated[int | None, typer.Option(min=3, help="simulated users K")] = None,
    requests: Annotated[int | None, typer.Option(min=2, help="requests per user M")] = None,
    out: Annotated[Path, typer.Option(help="where to write demo.md, demo.json and the charts")] = Path("reports"),
    target: Annotated[str, typer.Option(help="local (processes), compose or swarm (containers)")] = "local",
) -> None:
    """Run the scenario matrix on local clusters (or the compose stack) and print the comparison table."""
    _settings()  # each scenario sets its own modes, but a mistyped variable is still refused
    import tempfile

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from scaleout.lab import demo as demo_mod
    from scaleout.lab import report

    if target not in ("local", "compose", "swarm"):
        _fail(ValueError(f"unknown target {target!r}; choose local, compose or swarm"))
    names = scenario or list(demo_mod.SCENARIOS)
    unknown = [n for n in names if n not in demo_mod.SCENARIOS]
    if unknown:
        _fail(ValueError(f"unknown scenario {unknown}; choose from {', '.join(demo_mod.SCENARIOS)}"))
    k = users or (6 if quick else 30)
    m = requests or (8 if quick else 40)
    interactive = _interactive()
    with tempfile.TemporaryDirectory(prefix="scaleout-demo-") as workdir:
        if interactive:
            progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                console=console,
            )
            tasks = {n: progress.add_task(n, total=1) for n in names}
            with progress:
                ctx = demo_mod.Context(k, m, Path(workdir), lambda line: progress.console.print(line), target)
                results = demo_mod.run(ctx, names, on_done=lambda n: progress.update(tasks[n], completed=1))
        else:
            # No terminal (CI): plain lines instead of live bars.
            ctx = demo_mod.Context(k, m, Path(workdir), lambda line: print(line, flush=True), target)
            results = demo_mod.run(ctx, names, on_done=lambda n: print(f"done: {n}", flush=True))
    document = report.write(results, out, quick)
    # Two tables (steady traffic; faults and revocation) that fit 120 columns, wrapping long cells.
    for n, columns in enumerate(report.TERMINAL_TABLES):
        title = f"scaleout demo (K={k} users, M={m} requests each)" if n == 0 else None
        _table([c.title for c in columns], [[c.cell(row) for c in columns] for row in report.rows(results)], title)
    for line in report.readings(results):
        console.print("- " + line.replace("**", ""))
    console.print(f"wrote {out / 'demo.md'}, {out / 'demo.json'} and {len(document['charts'])} charts")


if __name__ == "__main__":
    app()
