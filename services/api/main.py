"""An API replica: answers `/api/*`, checks credentials itself, and asks the auth service to log people in.

Which replica answered is in every response (`X-Replica`), so the demo and the tests can see the balancer.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NamedTuple

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from scaleout.config import AuthMode, JWTAlg, JWTRevocation, SessionStore, get_settings
from scaleout.credentials import Ambiguous, Malformed, bearer_token, header_value, single_cookie
from scaleout.jwks import JWKSClient
from scaleout.keys import hs256_key
from scaleout.schemas import Credentials, LoginCredentials, RefreshRequest
from scaleout.sessions import (
    MemorySessions,
    RedisSessions,
    Session,
    SessionCookie,
    is_well_formed,
)
from scaleout.store import Coalescer, Denylist, StoreUnavailable, make_redis
from scaleout.tokens import TokenError, TokenKind, TokenVerifier, UnknownKid
from scaleout.web import AUTH_FAILURES, JSONResponse, add_identity, create_app, error, settle_heap, store_timer, timed

settings = get_settings()
REPLICA = settings.replica_id
JWT = settings.auth_mode is AuthMode.jwt
MEMORY = settings.session_store is SessionStore.memory
COOKIE = settings.cookie_name
SESSION_COOKIE = SessionCookie(COOKIE, (MemorySessions if MEMORY else RedisSessions).key)
CSRF_COOKIE = "csrf_token"
NO_STORE = {"Cache-Control": "no-store"}
NO_STORE_RAW = (b"cache-control", b"no-store")
CHALLENGE = 'Bearer realm="scaleout"' if JWT else 'Cookie realm="scaleout", cookie-name="sid"'


class NotAuthenticated(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Principal(NamedTuple):  # a NamedTuple builds in a third of a frozen dataclass's time
    username: str
    sid: str | None = None  # session mode
    csrf: str | None = None  # session mode
    bearer: str | None = None  # jwt mode


class Stores:
    """What every request reads, built once by `lifespan`: plain slots, not Starlette's `State` lookups."""

    __slots__ = ("denylist", "jwks", "sessions", "verifier")
    sessions: MemorySessions | RedisSessions
    denylist: Denylist | None
    verifier: TokenVerifier
    jwks: JWKSClient | None


STORES = Stores()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app.state
    state.http = httpx.AsyncClient(
        base_url=settings.auth_base_url,
        timeout=httpx.Timeout(10.0, connect=1.0),
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
    )
    state.redis = make_redis(settings)
    # The per-request reads: one lean pipelined connection per process, timed once per round trip.
    reads = Coalescer(state.redis, on_round_trip=store_timer("redis", "read").observe)
    stores = STORES
    if settings.session_store is SessionStore.redis:
        stores.sessions = RedisSessions(state.redis, reads, settings.session_idle_ttl, settings.session_absolute_ttl)
    else:
        stores.sessions = MemorySessions(settings.session_idle_ttl, settings.session_absolute_ttl)
    stores.denylist = Denylist(state.redis, reads) if settings.jwt_revocation is JWTRevocation.denylist else None
    stores.verifier = TokenVerifier(
        {}, settings.jwt_issuer, settings.jwt_audience, settings.jwt_leeway, settings.jwt_max_bytes
    )
    stores.jwks = None
    if JWT and settings.jwt_alg is JWTAlg.HS256:
        key = hs256_key(settings.jwt_secret)
        stores.verifier.set_keys({key.kid: key})
    elif JWT:
        stores.jwks = JWKSClient(state.http, settings.jwt_alg, stores.verifier)
        # Fetched once here: afterwards this replica verifies tokens with the auth service down.
        await stores.jwks.fetch_until_ready(timeout=20.0)
    settle_heap()
    yield
    await state.http.aclose()
    await reads.aclose()
    await state.redis.aclose()


app = create_app(REPLICA, lifespan=lifespan)


def unauthorized(reason: str) -> JSONResponse:
    AUTH_FAILURES.labels(reason).inc()
    return error(401, "not authenticated", {"WWW-Authenticate": CHALLENGE, **NO_STORE})


async def _verify_jwt(token: str) -> Principal:
    stores = STORES
    try:
        try:
            claims = stores.verifier.verify(token, TokenKind.access)
        except UnknownKid as exc:
            if stores.jwks is None or not await stores.jwks.refresh_for_unknown_kid(exc.kid):
                raise
            claims = stores.verifier.verify(token, TokenKind.access)
    except TokenError as exc:
        raise NotAuthenticated(exc.reason) from exc
    if stores.denylist is not None and await stores.denylist.contains(claims.jti):
        raise NotAuthenticated("revoked")
    return Principal(claims.sub, bearer=token)


async def authenticate(headers: list[tuple[bytes, bytes]]) -> Principal:
    """The caller's identity, or NotAuthenticated; StoreUnavailable when the store cannot say."""
    try:
        if JWT:
            token = bearer_token(headers)
            if token is None:
                raise NotAuthenticated("missing")
            return await _verify_jwt(token)
        found = SESSION_COOKIE.read(headers)
    except Ambiguous as exc:
        raise NotAuthenticated("ambiguous") from exc
    except Malformed as exc:  # never send junk to the store
        raise NotAuthenticated("malformed") from exc
    if found is None:
        raise NotAuthenticated("missing")
    sid, key = found
    sessions = STORES.sessions
    session = sessions.lookup(key) if MEMORY else await sessions.lookup(key)  # type: ignore[misc]
    if session is None:
        raise NotAuthenticated("unknown_session")
    return Principal(session.username, sid=sid, csrf=session.csrf)


AUTH_OUTCOME = "scaleout.auth"
AUTHENTICATED_ROUTES = frozenset({("GET", "/api/me"), ("HEAD", "/api/me"), ("POST", "/api/logout")})


class Authenticate:
    """Resolves the credential at the top of the middleware stack, for the routes that need one.

    As with Starlette's AuthenticationMiddleware, the outcome goes into the scope for the endpoint. Doing it
    here matters for a store behind the network: a request waiting on Redis is suspended and resumed through
    every frame between the event loop and its `await`, a handful here against about twenty inside the
    endpoint (`make bench`, session/redis).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["method"], scope["path"]) in AUTHENTICATED_ROUTES:
            try:
                scope[AUTH_OUTCOME] = await authenticate(scope["headers"])
            except (NotAuthenticated, StoreUnavailable) as exc:
                scope[AUTH_OUTCOME] = exc
        await self.app(scope, receive, send)


async def current_principal(request: Request) -> Principal:
    """What `Authenticate` found (raising what it caught), or a fresh check on a route it does not cover."""
    outcome = request.scope.get(AUTH_OUTCOME)
    if outcome is None:
        return await authenticate(request.scope["headers"])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def _client_ip(request: Request) -> str:
    # nginx overwrites X-Real-IP with the address it saw; X-Forwarded-For is the client's to forge.
    return header_value(request.scope["headers"], b"x-real-ip") or (
        request.client.host if request.client else "unknown"
    )


async def _call_auth(request: Request, path: str, json: dict[str, object], **kw: object) -> httpx.Response:
    try:
        return await request.app.state.http.post(path, json=json, **kw)
    except httpx.HTTPError as exc:
        raise StoreUnavailable("auth service unavailable") from exc


def _relay_error(upstream: httpx.Response) -> JSONResponse:
    headers = {k: v for k, v in upstream.headers.items() if k.lower() in ("retry-after", "www-authenticate")}
    if upstream.status_code >= 500:
        return error(503, "auth service unavailable", {"Retry-After": "1"})
    try:
        detail = str(upstream.json().get("detail", "request refused"))
    except ValueError:
        detail = "request refused"
    return error(upstream.status_code, detail, headers)


def _same(a: str, b: str) -> bool:
    # compare_digest refuses non-ASCII str; header bytes arrive as latin-1, so compare those bytes.
    return secrets.compare_digest(a.encode("latin-1", "replace"), b.encode("latin-1", "replace"))


def _cookie(name: str, value: str, max_age: int, http_only: bool) -> str:
    parts = [f"{name}={value}", "Path=/", "SameSite=Lax", f"Max-Age={max_age}"]
    if http_only:
        parts.append("HttpOnly")
    if settings.cookie_secure:
        parts.append("Secure")
    return "; ".join(parts)


# The two read endpoints are plain Starlette routes: FastAPI's dependency solving would parse every
# request's Cookie header with a pure-Python parser even though nothing here declares a cookie parameter
# (~45 µs per session request in `make bench`). Both get the same treatment, so the benchmark's baseline
# stays comparable.
async def whoami(request: Request) -> Response:
    response = JSONResponse(
        {"replica": REPLICA, "auth_mode": settings.auth_mode, "session_store": settings.session_store}
    )
    # Not cacheable either: the answer is which replica answered, and a cache in between would hide the balancer.
    response.raw_headers.append(NO_STORE_RAW)
    return response


@app.post("/api/register", status_code=201)
async def register(body: Credentials, request: Request) -> Response:
    upstream = await _call_auth(request, "/register", body.model_dump())
    if upstream.status_code != 201:
        return _relay_error(upstream)
    return JSONResponse(upstream.json(), status_code=201)


@app.post("/api/login")
async def login(body: LoginCredentials, request: Request) -> Response:
    upstream = await _call_auth(request, "/login", {**body.model_dump(), "client_ip": _client_ip(request)})
    if upstream.status_code != 200:
        return _relay_error(upstream)
    data = upstream.json()
    if JWT:
        return JSONResponse({**data, "replica": REPLICA}, headers=NO_STORE)

    # A session ID the client brought along (perhaps planted) is dropped: login always gets a fresh one.
    try:
        old = single_cookie(request.scope["headers"], COOKIE)
        if old and is_well_formed(old):
            await STORES.sessions.delete(old)
    except (Ambiguous, StoreUnavailable):
        pass
    if settings.session_store is SessionStore.memory:
        await STORES.sessions.put(data["sid"], Session(data["username"], data["csrf"], data["created"]))
    response = JSONResponse(
        {"auth_mode": "session", "replica": REPLICA, "expires_in": data["expires_in"]}, headers=NO_STORE
    )
    lifetime = settings.session_absolute_ttl
    response.headers.append("Set-Cookie", _cookie(COOKIE, data["sid"], lifetime, http_only=True))
    response.headers.append("Set-Cookie", _cookie(CSRF_COOKIE, data["csrf"], lifetime, http_only=False))
    return response


async def me(request: Request) -> Response:
    try:
        principal = await current_principal(request)
    except NotAuthenticated as exc:
        return unauthorized(exc.reason)
    response = JSONResponse(
        {
            "username": principal.username,
            "replica": REPLICA,
            "auth_mode": settings.auth_mode,
            "session_store": settings.session_store,
        }
    )
    response.raw_headers.append(NO_STORE_RAW)  # the hot path: skip re-encoding a headers dict per request
    return response


@app.post("/api/logout")
async def logout(request: Request) -> Response:
    try:
        principal = await current_principal(request)
    except NotAuthenticated as exc:
        return unauthorized(exc.reason)

    if principal.bearer is not None:
        upstream = await _call_auth(request, "/logout", {}, headers={"Authorization": f"Bearer {principal.bearer}"})
        if upstream.status_code != 204:
            return _relay_error(upstream)
        return Response(status_code=204, headers=NO_STORE)

    # Cookie-authenticated write: the double-submitted CSRF token must match the cookie and the session.
    sent = header_value(request.scope["headers"], b"x-csrf-token") or ""
    try:
        cookie = single_cookie(request.scope["headers"], CSRF_COOKIE) or ""
    except Ambiguous:
        cookie = ""
    expected = principal.csrf or ""
    if not (sent and _same(sent, cookie) and _same(sent, expected)):
        AUTH_FAILURES.labels("csrf").inc()
        return error(403, "CSRF token missing or wrong", NO_STORE)
    assert principal.sid is not None
    await timed(settings.session_store, "delete", STORES.sessions.delete(principal.sid))
    response = Response(status_code=204, headers=NO_STORE)
    response.headers.append("Set-Cookie", _cookie(COOKIE, "", 0, http_only=True))
    response.headers.append("Set-Cookie", _cookie(CSRF_COOKIE, "", 0, http_only=False))
    return response


@app.post("/api/refresh")
async def refresh(body: RefreshRequest, request: Request) -> Response:
    if not JWT:
        return error(400, "refresh tokens exist only in jwt mode")
    upstream = await _call_auth(request, "/refresh", body.model_dump())
    if upstream.status_code != 200:
        return _relay_error(upstream)
    return JSONResponse({**upstream.json(), "replica": REPLICA}, headers=NO_STORE)


app.add_route("/api/whoami", whoami, methods=["GET"])
app.add_route("/api/me", me, methods=["GET"])
add_identity(app, REPLICA, {"X-Replica": REPLICA})
app.add_middleware(Authenticate)  # outermost of ours: see its docstring
