"""An API replica: answers `/api/*`, checks credentials itself, and asks the auth service to log people in.

What "checks credentials" means is the `Authenticator` chosen once at start-up from the settings
(`services/api/replica.py`); nothing below asks which mode it is in, except to leave out the routes a mode
does not have. Which replica answered is in every response (`X-Replica`), so the demo and the tests can
see the balancer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from scaleout.core.authn import NO_STORE, NotAuthenticated
from scaleout.core.config import AuthMode, SessionCache, SessionStore, Settings, get_settings
from scaleout.core.nearcache import NearCache, NearCacheStats
from scaleout.core.schemas import Me, WhoAmI
from scaleout.core.store import StoreUnavailable, make_store
from scaleout.core.web import (
    AUTH_FAILURES,
    Access,
    JSONResponse,
    add_identity,
    create_app,
    error,
    install_docs,
    register_near_cache_metrics,
    settle_heap,
    store_timer,
)
from services.api.access import AUTH_OUTCOME, CSRFRefused, access_table, add_plain_route, caller, fast_path
from services.api.replica import Replica, build_authenticator
from services.api.routes import accounts, tokens

NO_STORE_RAW = (b"cache-control", b"no-store")


class Authenticate:
    """Resolves the credential at the top of the middleware stack, for the routes that need one.

    As with Starlette's AuthenticationMiddleware, the backend is handed in and the outcome goes into the
    scope for the endpoint. Doing it here matters for a store behind the network: a request waiting on
    Redis is suspended and resumed through every frame between the event loop and its `await`, a handful
    here against about twenty inside the endpoint. Which routes: `access.fast_path`, derived from the
    endpoints' own declarations.
    """

    def __init__(self, app: ASGIApp, replica: Replica, routes: frozenset[tuple[str, str]]) -> None:
        self.app = app
        self.replica = replica
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["method"], scope["path"]) in self.routes:
            try:
                scope[AUTH_OUTCOME] = await self.replica.authn.authenticate(scope["headers"])
            except (NotAuthenticated, StoreUnavailable) as exc:
                scope[AUTH_OUTCOME] = exc
        await self.app(scope, receive, send)


def near_caches(settings: Settings) -> Callable[[], NearCache] | None:
    """SESSION_CACHE=tracking: what makes the near-cache of each read connection (one per Redis the replica
    reads: one, or one per shard of a Redis Cluster), counted together in the metrics."""
    if settings.session_cache is not SessionCache.tracking:
        return None
    stats = NearCacheStats()
    made: list[NearCache] = []

    def make() -> NearCache:
        cache = NearCache(settings.session_cache_max_entries, settings.session_cache_staleness)
        cache.stats = stats
        made.append(cache)
        return cache

    register_near_cache_metrics(stats, lambda: sum(len(c) for c in made))
    return make


def create_api_app(settings: Settings, auth_transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """A replica app for `settings`; `auth_transport` lets a test reach an in-process auth service."""
    replica = Replica(settings)
    name = replica.name

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        replica.http = httpx.AsyncClient(
            base_url=settings.auth_base_url,
            timeout=httpx.Timeout(settings.auth_timeout, connect=1.0),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            transport=auth_transport,
        )
        store = replica.store = make_store(settings)
        await store.answers()  # a Redis Cluster's slot map, learnt before the first request needs it
        # The per-request reads: one lean pipelined connection per process, timed once per round trip, and
        # with SESSION_CACHE=tracking the near-cache that connection keeps in step with Redis.
        reads = store.reads(on_round_trip=store_timer("redis", "read").observe, caches=near_caches(settings))
        replica.authn = await build_authenticator(settings, store, reads, replica.http)
        settle_heap()
        yield
        await replica.authn.aclose()
        await replica.http.aclose()
        await reads.aclose()
        await store.aclose()

    app = create_app(name, lifespan=lifespan, ready=lambda: replica.ready())
    app.state.replica = replica  # for the routers' `ReplicaDep`

    @app.exception_handler(NotAuthenticated)
    async def _not_authenticated(request: Request, exc: NotAuthenticated) -> JSONResponse:
        AUTH_FAILURES.labels(exc.reason).inc()
        return error(401, "not authenticated", {"WWW-Authenticate": replica.authn.challenge, **NO_STORE})

    @app.exception_handler(CSRFRefused)
    async def _csrf(request: Request, exc: CSRFRefused) -> JSONResponse:
        AUTH_FAILURES.labels("csrf").inc()
        return error(403, "CSRF token missing or wrong", NO_STORE)

    # The two read endpoints are plain Starlette routes: FastAPI's dependency solving would parse every
    # request's Cookie header with a pure-Python parser even though nothing here declares a cookie
    # parameter. Both get the same treatment, so the benchmark's baseline stays comparable; the OpenAPI
    # document describes them all the same (`install_docs`).
    whoami_body = {"replica": name, **replica.mode_fields}
    me_fields = {"replica": name, **replica.mode_fields}

    async def whoami(request: Request) -> Response:
        response = JSONResponse(whoami_body)
        # Not cacheable: the answer is which replica answered, and a cache in between would hide the balancer.
        response.raw_headers.append(NO_STORE_RAW)
        return response

    async def me(request: Request) -> Response:
        principal = await caller(request)
        response = JSONResponse({"username": principal.username, **me_fields})
        response.raw_headers.append(NO_STORE_RAW)  # the hot path: skip re-encoding a headers dict per request
        return response

    add_plain_route(app, "/api/whoami", whoami)
    add_plain_route(app, "/api/me", me, Access.reader)
    include(app, accounts)
    if settings.auth_mode is AuthMode.jwt:
        include(app, tokens)
    if settings.auth_mode is AuthMode.cookie:
        add_profile_cookie(app)
    elif settings.auth_mode is AuthMode.session and settings.session_store is SessionStore.replicated:
        add_replication(app, replica)
    install_docs(app, {("GET", "/api/whoami"): WhoAmI, ("GET", "/api/me"): Me}, access_table(app), settings.cookie_name)
    identity = {"X-Replica": name} | ({"X-Node": settings.node_name} if settings.node_name else {})
    add_identity(app, name, identity)
    app.add_middleware(Authenticate, replica=replica, routes=fast_path(app))  # outermost of ours: see its docstring
    return app


def include(app: FastAPI, router: APIRouter) -> None:
    """The router's routes, as the app's own: FastAPI's `include_router` keeps them behind a lazily resolved
    branch that `app.routes` does not list, and everything derived from the routes (the access table, the
    metrics' path labels, a 405's `Allow`) reads that list."""
    app.router.routes.extend(router.routes)


def add_replication(app: FastAPI, replica: Replica) -> None:
    """The replica-to-replica endpoints of SESSION_STORE=replicated (not behind nginx, and signed)."""
    import logging

    from scaleout.core.authn import SessionAuthenticator
    from scaleout.core.replication import MAX_MESSAGE, SIGNATURE, Refused, ReplicatedSessions, snapshot_reply

    log = logging.getLogger("scaleout.replication")

    def store() -> ReplicatedSessions:
        authn = replica.authn
        assert isinstance(authn, SessionAuthenticator) and isinstance(authn.store, ReplicatedSessions)
        return authn.store

    async def replicate(request: Request) -> Response:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_MESSAGE:
            log.warning("replication: refused a message of %s bytes", declared)
            return error(413, "replication message too large")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_MESSAGE:
                return error(413, "replication message too large")
        try:
            store().receive(body, request.headers.get(SIGNATURE))  # a repeat is acknowledged, not applied again
        except Refused as exc:
            log.warning("replication: dropped a message: %s", exc)
            return error(400, f"replication message refused: {exc}")
        return Response(status_code=204)

    async def sessions(request: Request) -> Response:
        s = store()
        nonce, ts = request.query_params.get("nonce", ""), request.query_params.get("ts", "")
        try:
            body = s.snapshot(nonce, ts, request.headers.get(SIGNATURE))
        except Refused as exc:
            log.warning("replication: refused a snapshot request: %s", exc)
            return error(403, f"snapshot request refused: {exc}")
        return Response(body, media_type="application/json", headers={SIGNATURE: snapshot_reply(s.secret, nonce, body)})

    app.add_route("/internal/replicate", replicate, methods=["POST"], include_in_schema=False)
    app.add_route("/internal/sessions", sessions, methods=["GET"], include_in_schema=False)


def add_profile_cookie(app: FastAPI) -> None:
    """AUTH_MODE=cookie: sets a `profile` cookie of `size` bytes, to see what a browser keeps (about 4 KB)."""

    async def profile_cookie(request: Request) -> Response:
        raw = request.query_params.get("size", "")
        if not raw.isdigit() or not 1 <= int(raw) <= 16384:
            return error(422, "size must be 1 to 16384 bytes")
        response = JSONResponse({"set": "profile", "bytes": int(raw)}, headers=NO_STORE)
        response.headers.append("Set-Cookie", f"profile={'p' * int(raw)}; Path=/; SameSite=Lax; Max-Age=600")
        return response

    app.add_route("/api/profile-cookie", profile_cookie, methods=["GET"], include_in_schema=False)


app = create_api_app(get_settings())
