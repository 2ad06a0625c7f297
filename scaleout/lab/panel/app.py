"""The control panel of a running local cluster (`make lab`): live view and controls, on loopback only.

The page (static HTML, CSS, JS, and Chart.js from the machine's `libjs-chart.js` package) gets a snapshot
about 4 times a second by server-sent events. Every control is the same code path as the CLI verb
(`Cluster.lb`, `stop`, `start`, `down`/`up`). State-changing requests need the per-cluster token (in
`.cluster/secrets/panel_token`, part of the URL `make up` prints), a JSON body, and this panel's own
Host and Origin: no cross-site request and no DNS rebinding reaches them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
import httpx
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.staticfiles import StaticFiles

from scaleout.core.config import AuthMode, JWTRevocation, LBMode, RedisTopology, SessionCache, SessionStore, Settings
from scaleout.lab.drivers.base import ClusterError
from scaleout.lab.drivers.local import Cluster
from scaleout.lab.panel.traffic import TrafficGenerator
from scaleout.lab.processes import pid_alive
from scaleout.lab.redisadmin import redis_ping

STATIC = Path(__file__).parent / "static"
CHART_JS = (
    Path("/usr/share/javascript/chart.js/chart.umd.js"),
    Path("/usr/share/javascript/chart.js/chart.min.js"),
    Path("/usr/share/nodejs/chart.js/dist/chart.umd.js"),
)
TICK = 0.25  # seconds between snapshots
MAX_USERS = 200


def chart_js() -> Path | None:
    return next((p for p in CHART_JS if p.is_file()), None)


def panel_token(settings: Settings) -> str:
    """The panel's token, created once per cluster directory (owner-only, beside the other secrets)."""
    from scaleout.core.secretfiles import write_secret

    path = settings.secrets_path / "panel_token"
    settings.secrets_path.mkdir(parents=True, exist_ok=True)
    write_secret(path, secrets.token_urlsafe(24))
    return path.read_text().strip()


def panel_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.lab_port}/?token={panel_token(settings)}"


class LbBody(BaseModel):
    mode: LBMode


class ServiceBody(BaseModel):
    name: str = Field(pattern=r"^(api-[1-9]|auth|redis|nginx)$")
    action: str = Field(pattern=r"^(stop|kill|start)$")


class RestartBody(BaseModel):
    auth_mode: AuthMode
    session_store: SessionStore = SessionStore.redis
    lb_mode: LBMode = LBMode.round_robin
    jwt_revocation: JWTRevocation = JWTRevocation.none
    redis_topology: RedisTopology = RedisTopology.single
    session_cache: SessionCache = SessionCache.off


class FaultBody(BaseModel):
    target: str = Field(pattern=r"^(redis|auth)$")
    kind: str = Field(pattern=r"^(latency|jitter|bandwidth|blackhole|reset|clear)$")
    value: str | None = Field(default=None, max_length=16)


class TrafficBody(BaseModel):
    action: str = Field(pattern=r"^(start|stop|relogin)$")
    users: int = Field(default=30, ge=1, le=MAX_USERS)


class Panel:
    """What the panel holds between requests: the generator and the log of actions taken."""

    def __init__(self, cluster_dir: Path) -> None:
        self.cluster_dir = cluster_dir
        self.generator: TrafficGenerator | None = None
        self.actions: list[dict[str, Any]] = []
        self.last_replay: dict[str, object] | None = None
        self.busy = asyncio.Lock()
        self.metrics: dict[str, tuple[float, dict[str, float]]] = {}  # service -> (time, counters read)
        self.http = httpx.AsyncClient(timeout=0.5)

    def cluster(self) -> Cluster:
        return Cluster.load(self.cluster_dir)

    def act(self, label: str) -> None:
        self.actions.append({"t": time.time(), "label": label})
        del self.actions[:-50]

    async def _rates(self, name: str, address: str) -> tuple[float | None, dict[str, float] | None]:
        """A replica's requests per second since the last look, and with SESSION_CACHE=tracking its near-cache's
        hit rate and invalidations per second over the same window (from its `/metrics`)."""
        try:
            text = (await self.http.get(f"http://{address}/metrics")).text
        except httpx.HTTPError:
            return None, None
        counted = {"requests": 0.0, "hits": 0.0, "misses": 0.0, "invalidations": 0.0}
        for line in text.splitlines():
            if line.startswith("scaleout_requests_total{") and 'path="/api/' in line:  # not the panel's probes
                counted["requests"] += float(line.rsplit(" ", 1)[1])
            elif line.startswith("scaleout_near_cache_") and "_total " in line:
                metric, value = line.split()
                counted[metric.removeprefix("scaleout_near_cache_").removesuffix("_total")] = float(value)
        now = time.monotonic()
        before = self.metrics.get(name)
        self.metrics[name] = (now, counted)
        cached = "scaleout_near_cache_hits_total" in text
        if before is None or now <= before[0]:
            return 0.0, ({"hit_rate": 0.0, "invalidations_per_s": 0.0} if cached else None)
        elapsed = now - before[0]
        delta = {k: max(0.0, v - before[1].get(k, 0.0)) for k, v in counted.items()}
        cache = None
        if cached:
            asked = delta["hits"] + delta["misses"]
            cache = {
                "hit_rate": round(delta["hits"] / asked, 3) if asked else 0.0,
                "invalidations_per_s": round(delta["invalidations"] / elapsed, 1),
            }
        return round(delta["requests"] / elapsed, 1), cache

    async def services(self, cluster: Cluster) -> list[dict[str, Any]]:
        s = cluster.settings

        async def one(name: str) -> dict[str, Any]:
            svc = cluster.services[name]
            alive = bool(svc.pid and pid_alive(svc.pid))
            rps, cache = None, None
            if not alive:
                up = False
            elif svc.health in ("redis", "sentinel"):
                up = await anyio.to_thread.run_sync(
                    redis_ping, svc.host, svc.port, s.redis_username, s.redis_password()
                )
            else:
                try:
                    up = (await self.http.get(f"http://{svc.address}/healthz")).status_code == 200
                except httpx.HTTPError:
                    up = False
                if up and name.startswith("api-"):
                    rps, cache = await self._rates(name, svc.address)
            pid = svc.pid if alive else None
            return {"name": name, "up": up, "pid": pid, "address": svc.address, "rps": rps, "cache": cache}

        return list(await asyncio.gather(*(one(n) for n in cluster.services)))

    async def snapshot(self) -> dict[str, Any]:
        try:
            cluster = self.cluster()
        except (ClusterError, ValueError, KeyError) as exc:
            return {"error": f"no cluster: {exc}", "t": time.time()}
        s = cluster.settings
        gen = self.generator
        window = gen.take_window() if gen and gen.running else None
        users = []
        credential = None
        if gen and gen.users:
            users = [{"user": u.index, "replicas": list(u.recent), "statuses": list(u.statuses)} for u in gen.users]
            header, value = gen.users[0].credential()
            credential = {"header": header, "value": value, "bytes": len(f"{header}: {value}\r\n")}
        return {
            "t": time.time(),
            "modes": {
                "auth_mode": str(s.auth_mode),
                "session_store": str(s.session_store),
                "lb_mode": str(s.lb_mode),
                "jwt_revocation": str(s.jwt_revocation),
                "jwt_alg": str(s.jwt_alg),
                "redis_topology": str(s.redis_topology),
                "session_cache": str(s.session_cache),
                "replicas": s.replicas,
            },
            "choices": {
                "auth_mode": [m.value for m in AuthMode],
                "session_store": [m.value for m in SessionStore],
                "lb_mode": [m.value for m in LBMode],
                "jwt_revocation": [m.value for m in JWTRevocation],
                "redis_topology": [m.value for m in RedisTopology],
                "session_cache": [m.value for m in SessionCache],
            },
            "services": await self.services(cluster),
            "primary": await anyio.to_thread.run_sync(cluster.primary) if s.sentinel else None,
            "faults": {target: now.describe() for target, now in cluster.faults().items()},
            "traffic": {
                "running": bool(gen and gen.running),
                "users": len(gen.users) if gen else 0,
                "window": asdict(window) if window else None,
            },
            "user_map": users,
            "credential": credential,
            "actions": self.actions[-20:],
            "replay": self.last_replay,
            "sessions": await gen.first_users_sessions() if gen and gen.users else None,
            "busy": self.busy.locked(),
        }


def create_panel_app(cluster_dir: Path, token: str, port: int) -> FastAPI:
    panel = Panel(cluster_dir)
    hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
    origins = {f"http://{h}" for h in hosts}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if panel.generator:
            await panel.generator.stop()
        await panel.http.aclose()

    app = FastAPI(title="scaleout lab", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        # DNS rebinding: a page of another site that resolves its own name to 127.0.0.1 still sends its Host.
        if request.headers.get("host") not in hosts:
            return JSONResponse({"detail": "wrong Host: the panel answers on 127.0.0.1 only"}, status_code=421)
        origin = request.headers.get("origin")
        if origin is not None and origin not in origins:
            return JSONResponse({"detail": "cross-origin requests are refused"}, status_code=403)
        if request.method != "GET":
            sent = request.headers.get("x-panel-token", "")
            if not secrets.compare_digest(sent.encode(), token.encode()):
                return JSONResponse({"detail": "missing or wrong panel token"}, status_code=401)
            if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return JSONResponse({"detail": "JSON bodies only"}, status_code=415)
        return await call_next(request)

    def check_token(sent: str) -> None:
        if not secrets.compare_digest(sent.encode(), token.encode()):
            raise PermissionError

    @app.exception_handler(PermissionError)
    async def _denied(request: Request, exc: PermissionError) -> JSONResponse:
        return JSONResponse({"detail": "missing or wrong panel token"}, status_code=401)

    @app.exception_handler(ClusterError)
    async def _cluster_error(request: Request, exc: ClusterError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(), headers={"Cache-Control": "no-store"})

    @app.get("/vendor/chart.js")
    async def chart() -> Response:
        path = chart_js()
        if path is None:
            return JSONResponse({"detail": "Chart.js is not installed: run `make setup` (libjs-chart.js)"}, 404)
        return FileResponse(path, media_type="text/javascript")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": "lab"}

    @app.get("/favicon.ico")
    async def favicon() -> Response:
        icon = (
            '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
            '<rect width="16" height="16" fill="#2e9d4a"/></svg>'
        )
        return Response(icon, media_type="image/svg+xml")

    @app.get("/api/state")
    async def state(token_: Annotated[str, Query(alias="token")] = "") -> dict[str, Any]:
        check_token(token_)
        return await panel.snapshot()

    @app.get("/api/events")
    async def events(token_: Annotated[str, Query(alias="token")] = "") -> StreamingResponse:
        check_token(token_)

        async def stream() -> AsyncIterator[bytes]:
            while True:
                yield f"data: {json.dumps(await panel.snapshot())}\n\n".encode()
                await asyncio.sleep(TICK)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def control(label: str, work: Callable[[], Any]) -> dict[str, str]:
        if panel.busy.locked():
            return {"detail": "another action is still running"}
        async with panel.busy:
            panel.act(label)
            await anyio.to_thread.run_sync(work)
        return {"done": label}

    @app.post("/api/lb")
    async def lb(body: LbBody) -> dict[str, str]:
        return await control(f"balancer → {body.mode}", lambda: panel.cluster().lb(body.mode))

    @app.post("/api/service")
    async def service(body: ServiceBody) -> dict[str, str]:
        cluster = panel.cluster()
        if body.name not in cluster.services:
            raise HTTPException(404, f"unknown service {body.name}; this cluster has {', '.join(cluster.services)}")
        if body.action == "start":
            return await control(f"start {body.name}", lambda: panel.cluster().start(body.name))
        kill = body.action == "kill"
        return await control(f"{body.action} {body.name}", lambda: panel.cluster().stop(body.name, kill=kill))

    @app.post("/api/fault")
    async def fault(body: FaultBody) -> dict[str, str]:
        from scaleout.lab.faults import FaultError

        label = f"fault {body.target}: {body.kind} {body.value or ''}".strip()
        try:
            return await control(label, lambda: panel.cluster().fault(body.target, body.kind, body.value))
        except FaultError as exc:
            raise HTTPException(422, str(exc)) from exc

    @app.post("/api/restart")
    async def restart(body: RestartBody) -> dict[str, str]:
        was_running = panel.generator is not None and panel.generator.running
        users = panel.generator.count if panel.generator else 30
        if panel.generator:
            await panel.generator.stop()
            panel.generator = None

        def again() -> None:
            # `up` stops the running cluster itself and keeps the panel (this process) alive through it.
            old = panel.cluster()
            Cluster(old.settings.model_copy(update=body.model_dump())).up()

        label = (
            f"restart: {body.auth_mode}/{body.session_store}/{body.lb_mode}/{body.jwt_revocation}/{body.redis_topology}"
            f"/cache {body.session_cache}"
        )
        result = await control(label, again)
        if was_running:
            await start_traffic(users)
        return result

    async def start_traffic(users: int) -> None:
        if panel.generator:
            await panel.generator.stop()
        panel.generator = TrafficGenerator(panel.cluster().settings.public_url, users)
        await panel.generator.start()

    @app.post("/api/traffic")
    async def traffic(body: TrafficBody) -> dict[str, str]:
        if body.action == "start":
            panel.act(f"traffic: {body.users} users")
            await start_traffic(body.users)
        elif body.action == "relogin":
            if panel.generator is None:
                raise HTTPException(409, "start the traffic first")
            panel.act("every user logs in again")
            await panel.generator.relogin_all()
        elif panel.generator:
            panel.act("traffic stopped")
            await panel.generator.stop()
            panel.generator = None
        return {"done": body.action}

    @app.post("/api/revoke-replay")
    async def revoke_replay() -> dict[str, object]:
        if panel.generator is None or not panel.generator.users:
            raise HTTPException(409, "start the traffic first")
        panel.act("user 0 logs out; its credential is replayed on every replica")
        s = panel.cluster().settings
        panel.last_replay = await panel.generator.revoke_and_replay([s.replica_url(n) for n in s.replica_names])
        return panel.last_replay

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app


def serve(cluster_dir: Path) -> None:
    """Run the panel in the foreground (what `scaleout lab` starts in the background)."""
    import uvicorn

    settings = Cluster.load(cluster_dir).settings
    app = create_panel_app(cluster_dir, panel_token(settings), settings.lab_port)
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.run(app, host="127.0.0.1", port=settings.lab_port, log_level="warning", access_log=False)
