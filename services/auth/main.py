"""The auth service: verifies passwords (Argon2) and issues session IDs or JWTs.

Only the API replicas call it (nginx publishes just its JWKS), so `client_ip` in a request is the address
nginx saw, forwarded by the replica. What a good login is given is the `Issuer` chosen once at start-up.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from fastapi import FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import Counter

from scaleout.core.config import AuthMode, JWTAlg, JWTRevocation, SessionStore, Settings, get_settings
from scaleout.core.keys import BoundKey, KeyRing, hs256_key
from scaleout.core.keyspace import Keyspace
from scaleout.core.passwords import Passwords
from scaleout.core.revocation import Denylist, RefreshOutcome, RefreshTokens
from scaleout.core.schemas import (
    AuthRefreshRequest,
    DeleteAccountRequest,
    LoginRequest,
    RegisterRequest,
)
from scaleout.core.sessions import RedisSessions, Session, new_csrf_token, new_handle, new_session_id
from scaleout.core.store import Store, make_store
from scaleout.core.throttle import Throttle
from scaleout.core.tokens import TokenError, TokenIssuer, TokenKind, TokenVerifier, token_verifier
from scaleout.core.users import User, UsernameTaken, Users
from scaleout.core.web import AUTH_FAILURES, JSONResponse, add_identity, create_app, error, settle_heap

NO_STORE = {"Cache-Control": "no-store"}
BAD_LOGIN = "invalid username or password"
T = TypeVar("T")


HASHES = Counter("scaleout_password_hashes_total", "Argon2 hashes and verifications computed")
SHED = Counter("scaleout_password_hashes_shed_total", "Logins and registrations refused (503) before any hashing")


class Busy(Exception):
    """Too many password hashes waiting: the caller gets 503 with Retry-After instead of a pile-up."""


class HashPool:
    """Caps concurrent Argon2 work (each hash takes ~19 MiB and tens of ms of a core)."""

    def __init__(self, concurrency: int, wait: float) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._wait = wait

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=self._wait)
        except TimeoutError as exc:
            SHED.inc()
            raise Busy from exc
        try:
            HASHES.inc()
            return await run_in_threadpool(fn, *args)
        finally:
            self._slots.release()


class Keys:
    """The signing key and the verification keys, from the ring on disk or the HS256 secret."""

    def __init__(self, settings: Settings) -> None:
        self.ring: KeyRing | None = None
        self.hs: BoundKey | None = None
        if settings.jwt_alg is JWTAlg.HS256:
            self.hs = hs256_key(settings.hs256_secret())
        else:
            # A retired key verifies for as long as an access token it signed may live, no longer.
            self.ring = KeyRing(settings.keys_path, settings.jwt_alg, settings.access_ttl + settings.jwt_leeway)

    def refresh(self, verifier: TokenVerifier) -> None:
        """Pick up a ring changed by `scaleout rotate-keys` or `revoke-key`."""
        if self.ring is not None and self.ring.reload_if_changed():
            verifier.set_keys(self.verifiers)

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


class Issuer(ABC):
    """What a good login is given."""

    @abstractmethod
    async def issue(self, user: User, body: LoginRequest) -> dict[str, object]: ...


class SessionIssuer(Issuer):
    """A fresh session ID and CSRF token; written to the shared store, or handed to the replica that asked."""

    def __init__(self, settings: Settings, shared: RedisSessions | None) -> None:
        self.settings = settings
        self.shared = shared

    async def issue(self, user: User, body: LoginRequest) -> dict[str, object]:
        sid = self.shared.new_id(user.uid) if self.shared is not None else new_session_id()
        session = Session(
            user.username, new_csrf_token(), time.time(), user.uid, new_handle(), body.user_agent, body.client_ip
        )
        if self.shared is not None:
            await self.shared.put(sid, session)
        # With the memory store the replica that asked keeps the session: nobody else ever learns of it.
        return {
            "auth_mode": "session",
            "sid": sid,
            "csrf": session.csrf,
            "handle": session.handle,
            "created": session.created,
            "user_agent": session.user_agent,
            "ip": session.ip,
            "expires_in": self.settings.session_idle_ttl,
        }


class CookieIssuer(Issuer):
    """AUTH_MODE=cookie: the password was right; nothing is stored, the replica sets the naive cookies."""

    async def issue(self, user: User, body: LoginRequest) -> dict[str, object]:
        return {"auth_mode": "cookie"}


class JWTIssuer(Issuer):
    """A short-lived access token and a single-use refresh token, both of one new family per login."""

    def __init__(self, settings: Settings, keys: Keys, refresh: RefreshTokens, denylist: Denylist | None) -> None:
        self.settings = settings
        self.keys = keys
        self.refresh = refresh
        self.denylist = denylist
        self.tokens = TokenIssuer(settings.jwt_issuer, settings.jwt_audience, settings.access_ttl, settings.refresh_ttl)

    def pair(self, user: User, fam: str, not_after: int) -> tuple[dict[str, object], str]:
        if self.keys.ring is not None:
            self.keys.ring.reload_if_changed()  # a revoked signer is never used again
        signer = self.keys.signer
        access, _ = self.tokens.issue(signer, TokenKind.access, user.uid, user.username, fam, not_after)
        refresh, claims = self.tokens.issue(signer, TokenKind.refresh, user.uid, user.username, fam, not_after)
        body: dict[str, object] = {
            "auth_mode": "jwt",
            "access_token": access,
            "token_type": "bearer",
            "expires_in": self.settings.access_ttl,
            "refresh_token": refresh,
        }
        return body, claims.jti

    async def issue(self, user: User, body: LoginRequest) -> dict[str, object]:
        fam, now = secrets.token_urlsafe(32), time.time()
        pair, jti = self.pair(user, fam, int(now) + self.settings.refresh_absolute_ttl)
        info = {"h": new_handle(), "created": now, "a": body.user_agent, "p": body.client_ip}
        for evicted in await self.refresh.start_family(user.uid, fam, jti, info):
            if self.denylist is not None:
                await self.denylist.add_family(evicted)
        return pair


def create_auth_app(settings: Settings) -> FastAPI:
    class Service:
        users: Users
        passwords: Passwords
        hashing: HashPool
        throttle: Throttle
        refresh: RefreshTokens
        denylist: Denylist
        keys: Keys
        verifier: TokenVerifier
        issuer: Issuer
        jwt: JWTIssuer | None
        store: Store

    svc = Service()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = svc.store = make_store(settings)
        await store.answers()  # a Redis Cluster's slot map, learnt before the first request needs it
        keyspace = Keyspace(settings.secret("session_key").encode())
        svc.users = Users(settings.users_db_path)
        svc.passwords = Passwords(settings)
        svc.hashing = HashPool(settings.argon2_concurrency, settings.argon2_queue_wait)
        svc.throttle = Throttle(
            store, settings.throttle_window, settings.throttle_account_max, settings.throttle_ip_max
        )
        reads = store.reads()  # the stores' read path; the auth service only writes, so it never connects
        svc.refresh = RefreshTokens(store, keyspace, settings.refresh_ttl, settings.max_sessions_per_user)
        svc.denylist = Denylist(store, reads, settings.access_ttl + settings.jwt_leeway)
        svc.keys = Keys(settings)
        svc.verifier = token_verifier(settings, svc.keys.verifiers)
        svc.jwt = None
        if settings.auth_mode is AuthMode.jwt:
            deny = svc.denylist if settings.jwt_revocation is JWTRevocation.denylist else None
            svc.jwt = JWTIssuer(settings, svc.keys, svc.refresh, deny)
            svc.issuer = svc.jwt
        elif settings.auth_mode is AuthMode.cookie:
            svc.issuer = CookieIssuer()
        else:
            shared = None
            if settings.session_store is SessionStore.redis:
                shared = RedisSessions.for_settings(settings, store, reads)
            svc.issuer = SessionIssuer(settings, shared)
        settle_heap()
        yield
        await reads.aclose()
        await store.aclose()
        svc.users.close()

    # Ready while Redis answers: every login is counted there (the throttle) before its password is checked.
    app = create_app("auth", lifespan=lifespan, ready=lambda: svc.store.answers())

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy) -> JSONResponse:
        return error(503, "too many logins at once, try again shortly", {"Retry-After": "1", **NO_STORE})

    @app.post("/register", status_code=201)
    async def register(body: RegisterRequest) -> Response:
        password_hash = await svc.hashing.run(svc.passwords.hash, body.password)
        try:
            await run_in_threadpool(svc.users.add, body.username, password_hash)
        except UsernameTaken:
            return error(409, "username already taken")
        return JSONResponse({"username": body.username}, status_code=201)

    async def check_password(username: str, client_ip: str, password: str, user: User | None) -> JSONResponse | None:
        """None when the password is right; else the 401 or 429 to answer. Counted before it is checked."""
        verdict = await svc.throttle.take(username, client_ip)
        if not verdict.allowed:
            AUTH_FAILURES.labels("throttled").inc()
            return error(429, "too many failed logins, try again later", {"Retry-After": str(verdict.retry_after)})
        # Always one Argon2 verification, so unknown, disabled and wrong-password logins cost the same.
        ok = await svc.hashing.run(svc.passwords.verify, user.password_hash if user else None, password)
        if not ok or user is None or user.disabled:
            AUTH_FAILURES.labels("bad_login").inc()
            return error(401, BAD_LOGIN)
        await svc.throttle.refund(username, client_ip)
        return None

    @app.post("/login")
    async def login(body: LoginRequest) -> Response:
        user = await run_in_threadpool(svc.users.get, body.username)
        refused = await check_password(body.username, body.client_ip, body.password, user)
        if refused is not None:
            return refused
        assert user is not None
        grant = await svc.issuer.issue(user, body)
        return JSONResponse({**grant, "uid": user.uid, "username": user.username}, headers=NO_STORE)

    @app.post("/refresh")
    async def refresh(body: AuthRefreshRequest) -> Response:
        if svc.jwt is None:
            return error(400, "refresh tokens exist only in jwt mode")
        svc.keys.refresh(svc.verifier)
        try:
            claims = svc.verifier.verify(body.refresh_token, TokenKind.refresh)
        except TokenError as exc:
            AUTH_FAILURES.labels(f"refresh_{exc.reason}").inc()
            return error(401, "invalid refresh token")
        started = await svc.refresh.family_created(claims.sub, claims.fam)
        user = await run_in_threadpool(svc.users.by_uid, claims.sub)
        if started is None or user is None or user.disabled:
            await svc.refresh.revoke_family(claims.sub, claims.fam)
            AUTH_FAILURES.labels("refresh_no_account" if started is not None else "refresh_unknown").inc()
            return error(401, "invalid refresh token")
        not_after = int(started) + settings.refresh_absolute_ttl
        if time.time() >= not_after:
            AUTH_FAILURES.labels("refresh_family_expired").inc()
            return error(401, "invalid refresh token")
        outcome = await svc.refresh.spend(claims.jti, claims.fam, claims.sub)
        if outcome is not RefreshOutcome.ok:
            if outcome is RefreshOutcome.reused and settings.jwt_revocation is JWTRevocation.denylist:
                await svc.denylist.add_family(claims.fam)
            AUTH_FAILURES.labels(f"refresh_{outcome}").inc()
            return error(401, "invalid refresh token")
        pair, jti = svc.jwt.pair(user, claims.fam, not_after)
        await svc.refresh.remember(user.uid, jti)
        return JSONResponse({**pair, "uid": user.uid, "username": user.username}, headers=NO_STORE)

    @app.post("/logout", status_code=204)
    async def logout(authorization: str = Header(default="")) -> Response:
        """JWT logout: the replica forwards the caller's bearer token; it is verified here, never trusted."""
        svc.keys.refresh(svc.verifier)
        scheme, _, token = authorization.partition(" ")
        try:
            if scheme.lower() != "bearer":
                raise TokenError("no_bearer")
            claims = svc.verifier.verify(token.strip(), TokenKind.access)
        except TokenError:
            return error(401, "not authenticated", {"WWW-Authenticate": 'Bearer realm="scaleout"'})
        await svc.refresh.revoke(claims.sub, [claims.fam])
        await svc.refresh.revoke_family(claims.sub, claims.fam)  # also when the family left the index (the cap)
        if settings.jwt_revocation is JWTRevocation.denylist:
            # Every access token of this login, not only the one presented (a refresh makes more).
            await svc.denylist.add(claims.jti, claims.fam, claims.exp)
            await svc.denylist.add_family(claims.fam)
        return Response(status_code=204, headers=NO_STORE)

    @app.post("/delete-account", status_code=204)
    async def delete_account(body: DeleteAccountRequest) -> Response:
        """The replica vouches for who is asking (uid); the password is checked here, throttled like a login."""
        user = await run_in_threadpool(svc.users.by_uid, body.uid)
        refused = await check_password(body.username, body.client_ip, body.password, user)
        if refused is not None:
            return refused
        await run_in_threadpool(svc.users.delete, body.uid)
        return Response(status_code=204, headers=NO_STORE)

    @app.get("/.well-known/jwks.json")
    async def jwks() -> dict[str, list[dict[str, object]]]:
        svc.keys.refresh(svc.verifier)
        return svc.keys.jwks()

    add_identity(app, "auth", {"X-Service": "auth"})
    return app


app = create_auth_app(get_settings())
