"""An API replica: answers `/api/*`, checks credentials itself, and asks the auth service to log people in.

What "checks credentials" means is the `Authenticator` chosen once at start-up from the settings
(`scaleout.core.authn`); nothing below asks which mode it is in. Which replica answered is in every response
(`X-Replica`), so the demo and the tests can see the balancer.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import httpx
from fastapi import Body, FastAPI, Path, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from scaleout.core.authn import (
    NO_STORE,
    Authenticator,
    CookieAuthenticator,
    JWTAuthenticator,
    LoginGrant,
    MemorySessionAuthenticator,
    NotAuthenticated,
    Principal,
    RedisSessionAuthenticator,
    forget_cookies,
)
from scaleout.core.config import AuthMode, JWTAlg, JWTRevocation, SessionStore, Settings, get_settings
from scaleout.core.credentials import header_value
from scaleout.core.jwks import JWKSClient
from scaleout.core.keys import hs256_key
from scaleout.core.schemas import (
    Credentials,
    LoginCredentials,
    LogoutAll,
    Me,
    PasswordConfirmation,
    RefreshRequest,
    Registered,
    SessionList,
    TokenPair,
    WhoAmI,
)
from scaleout.core.sessions import HANDLE, MemorySessions, RedisSessions
from scaleout.core.store import Coalescer, Denylist, Durability, RefreshTokens, StoreUnavailable, make_redis
from scaleout.core.tokens import TokenKind, TokenVerifier
from scaleout.core.web import (
    AUTH_FAILURES,
    JSONResponse,
    add_identity,
    create_app,
    error,
    install_docs,
    settle_heap,
    store_timer,
)

NO_STORE_RAW = (b"cache-control", b"no-store")
AUTH_OUTCOME = "scaleout.auth"
AUTHENTICATED_ROUTES = frozenset({("GET", "/api/me"), ("HEAD", "/api/me"), ("POST", "/api/logout")})


def token_verifier(settings: Settings) -> TokenVerifier:
    return TokenVerifier(
        {},
        settings.jwt_issuer,
        settings.jwt_audience,
        settings.jwt_leeway,
        settings.jwt_max_bytes,
        {TokenKind.access: settings.access_ttl, TokenKind.refresh: settings.refresh_ttl},
    )


async def build_authenticator(
    settings: Settings, redis: object, reads: Coalescer, http: httpx.AsyncClient
) -> Authenticator:
    """The one place that looks at AUTH_MODE and SESSION_STORE."""
    from redis.asyncio import Redis

    assert isinstance(redis, Redis)
    if settings.auth_mode is AuthMode.jwt:
        verifier = token_verifier(settings)
        jwks = None
        if settings.jwt_alg is JWTAlg.HS256:
            key = hs256_key(settings.hs256_secret())
            verifier.set_keys({key.kid: key})
        else:
            jwks = JWKSClient(http, settings.jwt_alg, verifier, refresh_interval=settings.jwks_refresh_interval)
            # Fetched here first: afterwards this replica verifies tokens with the auth service down.
            await jwks.fetch_until_ready(timeout=20.0)
            jwks.start()
        durable = Durability.of(settings)
        denylist = (
            Denylist(redis, reads, settings.access_ttl + settings.jwt_leeway, durable)
            if settings.jwt_revocation is JWTRevocation.denylist
            else None
        )
        refresh = RefreshTokens(redis, settings.refresh_ttl, settings.max_sessions_per_user, durable)
        return JWTAuthenticator(verifier, jwks, denylist, refresh)
    if settings.auth_mode is AuthMode.cookie:
        return CookieAuthenticator()
    if settings.session_store is SessionStore.replicated:
        from scaleout.core.replication import ReplicatedSessions

        peers = [settings.replica_url(n) for n in settings.replica_names if n != settings.replica_id]
        replicated = ReplicatedSessions(
            settings.session_idle_ttl,
            settings.session_absolute_ttl,
            settings.max_sessions_per_user,
            settings.secret("session_key").encode(),
            peers,
            http,
            settings.replication_timeout,
        )
        await replicated.catch_up()  # before this replica reports healthy
        return MemorySessionAuthenticator(settings, replicated)
    if settings.session_store is SessionStore.memory:
        memory = MemorySessions(
            settings.session_idle_ttl, settings.session_absolute_ttl, settings.max_sessions_per_user
        )
        return MemorySessionAuthenticator(settings, memory)
    return RedisSessionAuthenticator(settings, RedisSessions.for_settings(settings, redis, reads))


class Replica:
    """What every request reads, built once by the lifespan: plain slots, not Starlette's `State` lookups."""

    __slots__ = ("authn", "http")
    authn: Authenticator
    http: httpx.AsyncClient


class Authenticate:
    """Resolves the credential at the top of the middleware stack, for the routes that need one.

    As with Starlette's AuthenticationMiddleware, the backend is handed in and the outcome goes into the
    scope for the endpoint. Doing it here matters for a store behind the network: a request waiting on
    Redis is suspended and resumed through every frame between the event loop and its `await`, a handful
    here against about twenty inside the endpoint.
    """

    def __init__(self, app: ASGIApp, replica: Replica) -> None:
        self.app = app
        self.replica = replica

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["method"], scope["path"]) in AUTHENTICATED_ROUTES:
            try:
                scope[AUTH_OUTCOME] = await self.replica.authn.authenticate(scope["headers"])
            except (NotAuthenticated, StoreUnavailable) as exc:
                scope[AUTH_OUTCOME] = exc
        await self.app(scope, receive, send)


def create_api_app(settings: Settings, auth_transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """A replica app for `settings`; `auth_transport` lets a test reach an in-process auth service."""
    name = settings.replica_id
    replica = Replica()
    mode_fields = {"auth_mode": settings.auth_mode, "session_store": settings.session_store}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        replica.http = httpx.AsyncClient(
            base_url=settings.auth_base_url,
            timeout=httpx.Timeout(10.0, connect=1.0),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
            transport=auth_transport,
        )
        redis = make_redis(settings)
        # The per-request reads: one lean pipelined connection per process, timed once per round trip.
        reads = Coalescer(redis, on_round_trip=store_timer("redis", "read").observe)
        replica.authn = await build_authenticator(settings, redis, reads, replica.http)
        settle_heap()
        yield
        await replica.authn.aclose()
        await replica.http.aclose()
        await reads.aclose()
        await redis.aclose()

    app = create_app(name, lifespan=lifespan)

    def unauthorized(reason: str) -> JSONResponse:
        AUTH_FAILURES.labels(reason).inc()
        return error(401, "not authenticated", {"WWW-Authenticate": replica.authn.challenge, **NO_STORE})

    async def current_principal(request: Request) -> Principal:
        """What `Authenticate` found (raising what it caught), or a fresh check on a route it does not cover."""
        outcome = request.scope.get(AUTH_OUTCOME)
        if outcome is None:
            return await replica.authn.authenticate(request.scope["headers"])
        if isinstance(outcome, Exception):
            raise outcome
        assert isinstance(outcome, Principal)
        return outcome

    async def writer(request: Request) -> Principal | Response:
        """The caller of a state-changing request, or the 401/403 that refuses it."""
        try:
            principal = await current_principal(request)
        except NotAuthenticated as exc:
            return unauthorized(exc.reason)
        if not replica.authn.allows_write(request.scope["headers"], principal):
            AUTH_FAILURES.labels("csrf").inc()
            return error(403, "CSRF token missing or wrong", NO_STORE)
        return principal

    def client_ip(request: Request) -> str:
        # nginx overwrites X-Real-IP with the address it saw; X-Forwarded-For is the client's to forge.
        return (
            header_value(request.scope["headers"], b"x-real-ip") or (request.client.host if request.client else "")
        )[:64] or "unknown"

    def user_agent(request: Request) -> str:
        return (header_value(request.scope["headers"], b"user-agent") or "")[:256]

    async def call_auth(path: str, json: dict[str, object], headers: dict[str, str]) -> Response | None:
        """POST to the auth service: None when it agreed, else the error response to hand on."""
        upstream = await post_auth(path, json, headers)
        return None if upstream.status_code in (200, 201, 204) else relay_error(upstream)

    async def post_auth(path: str, json: dict[str, object], headers: dict[str, str] | None = None) -> httpx.Response:
        try:
            return await replica.http.post(path, json=json, headers=headers)
        except httpx.HTTPError as exc:
            raise StoreUnavailable("auth service unavailable") from exc

    def relay_error(upstream: httpx.Response) -> JSONResponse:
        headers = {k: v for k, v in upstream.headers.items() if k.lower() in ("retry-after", "www-authenticate")}
        if upstream.status_code >= 500:
            return error(503, "auth service unavailable", {"Retry-After": upstream.headers.get("retry-after", "1")})
        try:
            detail = str(upstream.json().get("detail", "request refused"))
        except ValueError:
            detail = "request refused"
        return error(upstream.status_code, detail, headers)

    # The two read endpoints are plain Starlette routes: FastAPI's dependency solving would parse every
    # request's Cookie header with a pure-Python parser even though nothing here declares a cookie
    # parameter. Both get the same treatment, so the benchmark's baseline stays comparable; the OpenAPI
    # document describes them all the same (`install_docs`).
    whoami_body = {"replica": name, **mode_fields}

    async def whoami(request: Request) -> Response:
        response = JSONResponse(whoami_body)
        # Not cacheable: the answer is which replica answered, and a cache in between would hide the balancer.
        response.raw_headers.append(NO_STORE_RAW)
        return response

    async def me(request: Request) -> Response:
        try:
            principal = await current_principal(request)
        except NotAuthenticated as exc:
            return unauthorized(exc.reason)
        response = JSONResponse({"username": principal.username, "replica": name, **mode_fields})
        response.raw_headers.append(NO_STORE_RAW)  # the hot path: skip re-encoding a headers dict per request
        return response

    @app.post("/api/register", status_code=201, responses={409: {}, 422: {}, 429: {}})
    async def register(body: Credentials, request: Request) -> Response:
        """Create an account (Argon2id hash on the auth service)."""
        upstream = await post_auth("/register", {**body.model_dump(), "client_ip": client_ip(request)})
        if upstream.status_code != 201:
            return relay_error(upstream)
        return JSONResponse({"username": upstream.json()["username"]}, status_code=201)

    @app.post("/api/login", responses={200: {"model": TokenPair}, 401: {}, 429: {}})
    async def login(body: LoginCredentials, request: Request) -> Response:
        """Session mode: sets the `sid` and `csrf_token` cookies. JWT mode: an access and a refresh token."""
        upstream = await post_auth(
            "/login",
            {**body.model_dump(), "client_ip": client_ip(request), "user_agent": user_agent(request)},
        )
        if upstream.status_code != 200:
            return relay_error(upstream)
        data = upstream.json()
        if settings.auth_mode is AuthMode.cookie:
            data["password"] = body.password  # the naive cookie carries it: that is the lesson
        grant = LoginGrant(data.pop("uid"), data.pop("username"), data)
        return await replica.authn.login(request.scope["headers"], grant, name)

    @app.post("/api/logout", status_code=204, responses={401: {}, 403: {}})
    async def logout(request: Request) -> Response:
        """Ends this login: the session everywhere (session mode), the refresh family (jwt mode)."""
        found = await writer(request)
        if isinstance(found, Response):
            return found
        return await replica.authn.logout(found, call_auth)

    @app.post("/api/refresh", responses={200: {"model": TokenPair}, 401: {}, 429: {}})
    async def refresh(body: RefreshRequest, request: Request) -> Response:
        """JWT mode: a new token pair for a refresh token, which is spent (single use)."""
        if not isinstance(replica.authn, JWTAuthenticator):
            return error(400, "refresh tokens exist only in jwt mode")
        upstream = await post_auth("/refresh", {**body.model_dump(), "client_ip": client_ip(request)})
        if upstream.status_code != 200:
            return relay_error(upstream)
        data = upstream.json()
        data.pop("uid", None)
        data.pop("username", None)
        return JSONResponse({**data, "replica": name}, headers=NO_STORE)

    @app.get("/api/sessions", response_model=SessionList, responses={401: {}})
    async def sessions(request: Request) -> Response:
        """The caller's sessions (jwt mode: its refresh families, one per login). Memory store: this replica's."""
        try:
            principal = await current_principal(request)
        except NotAuthenticated as exc:
            return unauthorized(exc.reason)
        views = await replica.authn.sessions(principal)
        body = {
            "sessions": [
                {
                    "id": v.id,
                    "created": int(v.created),
                    "last_seen": int(v.last_seen),
                    "current": v.current,
                    "user_agent": v.user_agent,
                    "ip": v.ip,
                }
                for v in views
            ]
        }
        return JSONResponse(body, headers=NO_STORE)

    @app.delete("/api/sessions/{session_id}", status_code=204, responses={401: {}, 403: {}, 404: {}})
    async def end_session(session_id: Annotated[str, Path(max_length=64)], request: Request) -> Response:
        """End one of the caller's sessions, on every replica (memory store: on this one)."""
        found = await writer(request)
        if isinstance(found, Response):
            return found
        if not HANDLE.fullmatch(session_id) or not await replica.authn.end(found, session_id):
            return error(404, "no such session", NO_STORE)
        response = Response(status_code=204, headers=NO_STORE)
        if session_id == found.handle:
            forget_cookies(replica.authn, response)
        return response

    @app.post("/api/logout-all", status_code=204, responses={401: {}, 403: {}})
    async def logout_all(request: Request, body: Annotated[LogoutAll | None, Body()] = None) -> Response:
        """End every session of the caller, or every other one with `keep_current`."""
        found = await writer(request)
        if isinstance(found, Response):
            return found
        keep = body.keep_current if body is not None else False
        await replica.authn.end_all(found, keep_current=keep)
        response = Response(status_code=204, headers=NO_STORE)
        if not keep:
            forget_cookies(replica.authn, response)
        return response

    @app.delete("/api/me", status_code=204, responses={401: {}, 403: {}, 429: {}})
    async def delete_me(body: PasswordConfirmation, request: Request) -> Response:
        """Delete the caller's account (password required) and end all its sessions and refresh families."""
        found = await writer(request)
        if isinstance(found, Response):
            return found
        refused = await call_auth(
            "/delete-account",
            {"uid": found.uid, "username": found.username, "password": body.password, "client_ip": client_ip(request)},
            {},
        )
        if refused is not None:
            if refused.status_code == 401:  # the caller is who they say; only the password was wrong
                return error(403, "wrong password", NO_STORE)
            return refused
        await replica.authn.end_all(found, keep_current=False)
        response = Response(status_code=204, headers=NO_STORE)
        forget_cookies(replica.authn, response)
        return response

    app.add_route("/api/whoami", whoami, methods=["GET"])
    app.add_route("/api/me", me, methods=["GET"])
    if settings.auth_mode is AuthMode.cookie:
        add_profile_cookie(app)
    elif settings.session_store is SessionStore.replicated:
        add_replication(app, replica)
    install_docs(
        app,
        {("GET", "/api/whoami"): WhoAmI, ("GET", "/api/me"): Me},
        settings.cookie_name,
        {
            ("post", "/api/register"): Registered,
            ("post", "/api/login"): TokenPair,
            ("post", "/api/refresh"): TokenPair,
            ("get", "/api/sessions"): SessionList,
        },
    )
    add_identity(app, name, {"X-Replica": name})
    app.add_middleware(Authenticate, replica=replica)  # outermost of ours: see its docstring
    return app


def add_replication(app: FastAPI, replica: Replica) -> None:
    """The replica-to-replica endpoints of SESSION_STORE=replicated (not behind nginx, and signed)."""
    import logging

    from scaleout.core.replication import MAX_MESSAGE, SIGNATURE, Refused, ReplicatedSessions, sign

    log = logging.getLogger("scaleout.replication")

    def store() -> ReplicatedSessions:
        s = replica.authn.store  # type: ignore[attr-defined]  # a session authenticator in this mode
        assert isinstance(s, ReplicatedSessions)
        return s

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
            s = store()
            s.apply(s.check(body, request.headers.get(SIGNATURE)))
        except Refused as exc:
            log.warning("replication: dropped a message: %s", exc)
            return error(400, f"replication message refused: {exc}")
        return Response(status_code=204)

    async def sessions(request: Request) -> Response:
        s = store()
        if not secrets.compare_digest(request.headers.get(SIGNATURE, ""), sign(s.secret, b"snapshot")):
            return error(403, "unsigned snapshot request")
        body = s.snapshot()
        return Response(body, media_type="application/json", headers={SIGNATURE: sign(s.secret, body)})

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
