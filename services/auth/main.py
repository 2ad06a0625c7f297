"""The auth service: verifies passwords (Argon2) and issues session IDs or JWTs.

Only the API replicas call it (nginx publishes just its JWKS), so `client_ip` in a login is the address
nginx saw, forwarded by the replica.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from scaleout.config import AuthMode, JWTAlg, JWTRevocation, SessionStore, get_settings
from scaleout.keys import BoundKey, KeyRing, hs256_key
from scaleout.passwords import Passwords
from scaleout.schemas import Credentials, LoginRequest, RefreshRequest
from scaleout.sessions import RedisSessions, Session, new_csrf_token, new_session_id
from scaleout.store import Coalescer, Denylist, RefreshOutcome, RefreshTokens, Throttle, make_redis
from scaleout.tokens import TokenError, TokenIssuer, TokenKind, TokenVerifier
from scaleout.users import UsernameTaken, Users
from scaleout.web import AUTH_FAILURES, JSONResponse, add_identity, create_app, error, settle_heap

settings = get_settings()
NO_STORE = {"Cache-Control": "no-store"}
BAD_LOGIN = "invalid username or password"


class Keys:
    """The signing key and the verification keys, from the ring on disk or the HS256 secret."""

    def __init__(self) -> None:
        self.ring: KeyRing | None = None
        self.hs: BoundKey | None = None
        if settings.jwt_alg is JWTAlg.HS256:
            self.hs = hs256_key(settings.jwt_secret)
        else:
            grace = max(settings.access_ttl, settings.refresh_ttl) + settings.jwt_leeway
            self.ring = KeyRing(settings.keys_path, settings.jwt_alg, grace)

    @property
    def signer(self) -> BoundKey:
        if self.hs:
            return self.hs
        assert self.ring is not None
        return self.ring.signer

    @property
    def verifiers(self) -> dict[str, BoundKey]:
        if self.hs:
            return {self.hs.kid: self.hs}
        assert self.ring is not None
        return self.ring.verifiers

    def jwks(self) -> dict[str, list[dict[str, object]]]:
        return self.ring.jwks() if self.ring else {"keys": []}


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    redis = make_redis(settings)
    app.state.redis = redis
    app.state.users = Users(settings.users_db_path)
    app.state.passwords = Passwords(settings)
    app.state.throttle = Throttle(
        redis, settings.throttle_window, settings.throttle_account_max, settings.throttle_ip_max
    )
    reads = Coalescer(redis)  # the stores' read path; the auth service only writes, so it never connects
    app.state.sessions = RedisSessions(redis, reads, settings.session_idle_ttl, settings.session_absolute_ttl)
    app.state.refresh = RefreshTokens(redis, settings.refresh_ttl)
    app.state.denylist = Denylist(redis, reads)
    keys = app.state.keys = Keys()
    app.state.issuer = TokenIssuer(
        settings.jwt_issuer, settings.jwt_audience, settings.access_ttl, settings.refresh_ttl
    )
    app.state.verifier = TokenVerifier(
        keys.verifiers, settings.jwt_issuer, settings.jwt_audience, settings.jwt_leeway, settings.jwt_max_bytes
    )
    settle_heap()
    yield
    await reads.aclose()
    await redis.aclose()
    app.state.users.close()


app = create_app("auth", lifespan=lifespan)


@app.post("/register", status_code=201)
async def register(body: Credentials, request: Request) -> Response:
    state = request.app.state
    password_hash = await run_in_threadpool(state.passwords.hash, body.password)
    try:
        await run_in_threadpool(state.users.add, body.username, password_hash)
    except UsernameTaken:
        return error(409, "username already taken")
    return JSONResponse({"username": body.username}, status_code=201)


async def _token_pair(request: Request, username: str, fam: str) -> dict[str, object]:
    state = request.app.state
    signer = state.keys.signer
    access, _ = state.issuer.issue(signer, TokenKind.access, username, fam)
    refresh, refresh_claims = state.issuer.issue(signer, TokenKind.refresh, username, fam)
    await state.refresh.remember(refresh_claims.jti)
    return {
        "auth_mode": "jwt",
        "access_token": access,
        "token_type": "bearer",
        "expires_in": settings.access_ttl,
        "refresh_token": refresh,
    }


@app.post("/login")
async def login(body: LoginRequest, request: Request) -> Response:
    state = request.app.state
    verdict = await state.throttle.check(body.username, body.client_ip)
    if not verdict.allowed:
        AUTH_FAILURES.labels("throttled").inc()
        return error(429, "too many failed logins, try again later", {"Retry-After": str(verdict.retry_after)})

    user = await run_in_threadpool(state.users.get, body.username)
    # Always one Argon2 verification, so unknown, disabled and wrong-password logins cost the same.
    ok = await run_in_threadpool(state.passwords.verify, user.password_hash if user else None, body.password)
    if not ok or user is None or user.disabled:
        await state.throttle.record_failure(body.username, body.client_ip)
        AUTH_FAILURES.labels("bad_login").inc()
        return error(401, BAD_LOGIN)

    if settings.auth_mode is AuthMode.jwt:
        return JSONResponse(await _token_pair(request, user.username, new_session_id()), headers=NO_STORE)

    sid, session = new_session_id(), Session(user.username, new_csrf_token(), time.time())
    if settings.session_store is SessionStore.redis:
        await state.sessions.put(sid, session)
    # With the memory store the replica that asked keeps the session: nobody else ever learns of it.
    return JSONResponse(
        {
            "auth_mode": "session",
            "sid": sid,
            "csrf": session.csrf,
            "username": session.username,
            "created": session.created,
            "expires_in": settings.session_idle_ttl,
        },
        headers=NO_STORE,
    )


@app.post("/refresh")
async def refresh(body: RefreshRequest, request: Request) -> Response:
    state = request.app.state
    if settings.auth_mode is not AuthMode.jwt:
        return error(400, "refresh tokens exist only in jwt mode")
    try:
        claims = state.verifier.verify(body.refresh_token, TokenKind.refresh)
    except TokenError as exc:
        AUTH_FAILURES.labels(f"refresh_{exc.reason}").inc()
        return error(401, "invalid refresh token")
    outcome = await state.refresh.spend(claims.jti, claims.fam)
    if outcome is not RefreshOutcome.ok:
        AUTH_FAILURES.labels(f"refresh_{outcome}").inc()
        return error(401, "invalid refresh token")
    return JSONResponse(await _token_pair(request, claims.sub, claims.fam), headers=NO_STORE)


@app.post("/logout", status_code=204)
async def logout(request: Request, authorization: str = Header(default="")) -> Response:
    """JWT logout: the replica forwards the caller's bearer token; it is verified here, never trusted."""
    state = request.app.state
    scheme, _, token = authorization.partition(" ")
    try:
        if scheme.lower() != "bearer":
            raise TokenError("no_bearer")
        claims = state.verifier.verify(token.strip(), TokenKind.access)
    except TokenError:
        return error(401, "not authenticated", {"WWW-Authenticate": 'Bearer realm="scaleout"'})
    await state.refresh.revoke_family(claims.fam)
    if settings.jwt_revocation is JWTRevocation.denylist:
        await state.denylist.add(claims.jti, claims.exp)
    return Response(status_code=204, headers=NO_STORE)


@app.get("/.well-known/jwks.json")
async def jwks(request: Request) -> dict[str, list[dict[str, object]]]:
    return request.app.state.keys.jwks()


add_identity(app, "auth", {"X-Service": "auth"})
