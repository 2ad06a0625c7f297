"""Who is calling? One small class per auth mode, chosen once at start-up.

A replica is built around one `Authenticator` (as Starlette's `AuthenticationMiddleware` takes a backend):
the endpoints never ask which mode they are in. Each class answers the same questions its own way:

- `authenticate(headers)`: the caller, or `NotAuthenticated` (401), or `StoreUnavailable` (503);
- `login(...)` / `logout(...)`: what a login hands the client, and what a logout ends;
- `allows_write(headers, principal)`: the CSRF check a cookie-authenticated write needs (bearer: none);
- `sessions`, `end`, `end_all`: the caller's sessions (jwt: its refresh families), listed and ended.
"""

from __future__ import annotations

import re
import secrets
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from starlette.responses import Response

from scaleout.core.config import Settings
from scaleout.core.credentials import Ambiguous, Malformed, bearer_token, header_value, single_cookie
from scaleout.core.jwks import JWKSClient
from scaleout.core.revocation import Denylist, RefreshTokens
from scaleout.core.sessions import (
    Session,
    SessionCookie,
    SessionInfo,
    SessionStore,
    is_well_formed,
)
from scaleout.core.store import StoreUnavailable
from scaleout.core.tokens import TokenError, TokenKind, TokenVerifier, UnknownKid
from scaleout.core.web import JSONResponse

CSRF_COOKIE = "csrf_token"
NO_STORE = {"Cache-Control": "no-store"}


class NotAuthenticated(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Principal(NamedTuple):  # a NamedTuple builds in a third of a frozen dataclass's time
    uid: str
    username: str
    handle: str  # the public id of this login: a session's handle, or a refresh family's
    csrf: str | None = None  # cookie modes: the double-submit token the session holds
    sid: str | None = None  # session mode
    bearer: str | None = None  # jwt mode
    fam: str | None = None  # jwt mode


@dataclass(frozen=True, slots=True)
class LoginGrant:
    """What the auth service answered to a good login, as a replica hands it on."""

    uid: str
    username: str
    body: dict[str, Any]  # the auth service's JSON, mode-specific


def _same(a: str, b: str) -> bool:
    # compare_digest refuses non-ASCII str; header bytes arrive as latin-1, so compare those bytes.
    return secrets.compare_digest(a.encode("latin-1", "replace"), b.encode("latin-1", "replace"))


class Authenticator(ABC):
    challenge: str

    @abstractmethod
    async def authenticate(self, headers: list[tuple[bytes, bytes]]) -> Principal: ...

    @abstractmethod
    async def login(self, headers: list[tuple[bytes, bytes]], grant: LoginGrant, replica: str) -> Response: ...

    @abstractmethod
    async def logout(self, principal: Principal, call_auth: AuthCall) -> Response: ...

    @abstractmethod
    def allows_write(self, headers: list[tuple[bytes, bytes]], principal: Principal) -> bool: ...

    @abstractmethod
    async def sessions(self, principal: Principal) -> list[SessionInfo]: ...

    @abstractmethod
    async def end(self, principal: Principal, handle: str) -> bool: ...

    @abstractmethod
    async def end_all(self, principal: Principal, keep_current: bool) -> None: ...

    async def aclose(self) -> None:  # noqa: B027 - most modes start no background work
        """Background work the authenticator started (key refreshes) stops here."""


# A call to the auth service: path, JSON body, extra headers -> (status, JSON body, headers kept).
AuthCall = Callable[[str, dict[str, object], dict[str, str]], Awaitable[Response | None]]


class SessionAuthenticator(Authenticator):
    """A session ID in an HttpOnly cookie, a CSRF token in a script-readable one (double submit)."""

    def __init__(self, settings: Settings, store: SessionStore) -> None:
        self.store = store
        self.cookie_name = settings.cookie_name
        self.cookie: SessionCookie[bytes | str] = SessionCookie(self.cookie_name, store.key)
        self.lifetime = settings.session_absolute_ttl
        self.idle = settings.session_idle_ttl
        self.secure = settings.cookie_secure
        self.challenge = f'Cookie realm="scaleout", cookie-name="{self.cookie_name}"'

    async def authenticate(self, headers: list[tuple[bytes, bytes]]) -> Principal:
        try:
            found = self.cookie.read(headers)
        except Ambiguous as exc:
            raise NotAuthenticated("ambiguous") from exc
        except Malformed as exc:  # never send junk to the store
            raise NotAuthenticated("malformed") from exc
        if found is None:
            raise NotAuthenticated("missing")
        sid, key = found
        session = await self.store.lookup(key)
        if session is None:
            raise NotAuthenticated("unknown_session")
        self.store.touch(session)
        return Principal(session.uid, session.username, session.handle, csrf=session.csrf, sid=sid)

    def set_cookie(self, name: str, value: str, max_age: int, http_only: bool) -> str:
        parts = [f"{name}={value}", "Path=/", "SameSite=Lax", f"Max-Age={max_age}"]
        if http_only:
            parts.append("HttpOnly")
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts)

    async def _forget_planted(self, headers: list[tuple[bytes, bytes]]) -> None:
        # A session ID the client brought along (perhaps planted) is dropped: login always gets a fresh one.
        try:
            old = single_cookie(headers, self.cookie_name)
            if old and is_well_formed(old):
                await self.store.delete(old)
        except (Ambiguous, StoreUnavailable):
            pass

    async def login(self, headers: list[tuple[bytes, bytes]], grant: LoginGrant, replica: str) -> Response:
        await self._forget_planted(headers)
        body = grant.body
        sid, csrf = str(body["sid"]), str(body["csrf"])
        await self._keep(sid, grant)
        response = JSONResponse(
            {"auth_mode": "session", "replica": replica, "expires_in": body["expires_in"]}, headers=NO_STORE
        )
        response.headers.append("Set-Cookie", self.set_cookie(self.cookie_name, sid, self.lifetime, http_only=True))
        response.headers.append("Set-Cookie", self.set_cookie(CSRF_COOKIE, csrf, self.lifetime, http_only=False))
        return response

    async def _keep(self, sid: str, grant: LoginGrant) -> None:
        """Where the session lives after login: the auth service already wrote it to a shared store."""

    def allows_write(self, headers: list[tuple[bytes, bytes]], principal: Principal) -> bool:
        # The double-submitted token must match the cookie and the session.
        sent = header_value(headers, b"x-csrf-token") or ""
        try:
            cookie = single_cookie(headers, CSRF_COOKIE) or ""
        except Ambiguous:
            cookie = ""
        expected = principal.csrf or ""
        return bool(sent) and _same(sent, cookie) and _same(sent, expected)

    async def logout(self, principal: Principal, call_auth: AuthCall) -> Response:
        assert principal.sid is not None
        await self.store.delete(principal.sid)
        response = Response(status_code=204, headers=NO_STORE)
        forget_cookies(self, response)
        return response

    async def sessions(self, principal: Principal) -> list[SessionInfo]:
        found: list[SessionInfo] = await self.store.list(principal.uid)
        return [replace(s, current=s.id == principal.handle) for s in sorted(found, key=lambda s: s.created)]

    async def end(self, principal: Principal, handle: str) -> bool:
        return await self.store.end(principal.uid, handle)

    async def end_all(self, principal: Principal, keep_current: bool) -> None:
        await self.store.end_all(principal.uid, principal.handle if keep_current else None)


class MemorySessionAuthenticator(SessionAuthenticator):
    """Sessions in this replica's memory: no other replica will ever know them (unless the store replicates)."""

    async def aclose(self) -> None:
        closing = getattr(self.store, "aclose", None)  # the replicated store resends in the background
        if closing is not None:
            await closing()

    async def _keep(self, sid: str, grant: LoginGrant) -> None:
        body = grant.body
        session = Session(
            grant.username,
            str(body["csrf"]),
            float(body["created"]),
            grant.uid,
            str(body["handle"]),
            str(body.get("user_agent", "")),
            str(body.get("ip", "")),
        )
        await self.store.put(sid, session)


class RedisSessionAuthenticator(SessionAuthenticator):
    """Sessions in the shared Redis: every replica sees every session, one round trip per request. The auth
    service stored the session at login; this replica only reads it."""


class JWTAuthenticator(Authenticator):
    """Signed, self-contained access tokens any replica verifies alone; refresh families in Redis.

    With a `denylist`, every request also asks Redis whether the token's login was ended.
    """

    challenge = 'Bearer realm="scaleout"'

    def __init__(
        self, verifier: TokenVerifier, jwks: JWKSClient | None, denylist: Denylist | None, refresh: RefreshTokens
    ) -> None:
        self.verifier = verifier
        self.jwks = jwks
        self.denylist = denylist
        self.refresh = refresh

    async def authenticate(self, headers: list[tuple[bytes, bytes]]) -> Principal:
        try:
            token = bearer_token(headers)
        except Ambiguous as exc:
            raise NotAuthenticated("ambiguous") from exc
        if token is None:
            raise NotAuthenticated("missing")
        try:
            try:
                claims = self.verifier.verify(token, TokenKind.access)
            except UnknownKid as exc:
                if self.jwks is None or not await self.jwks.refresh_for_unknown_kid(exc.kid):
                    raise
                claims = self.verifier.verify(token, TokenKind.access)
        except TokenError as exc:
            raise NotAuthenticated(exc.reason) from exc
        if self.denylist is not None and await self.denylist.contains(claims.jti, claims.fam):
            raise NotAuthenticated("revoked")
        return Principal(claims.sub, claims.name, claims.fam, bearer=token, fam=claims.fam)

    async def login(self, headers: list[tuple[bytes, bytes]], grant: LoginGrant, replica: str) -> Response:
        return JSONResponse({**grant.body, "replica": replica}, headers=NO_STORE)

    def allows_write(self, headers: list[tuple[bytes, bytes]], principal: Principal) -> bool:
        return True  # a bearer token is never sent by a browser on its own: no CSRF

    async def logout(self, principal: Principal, call_auth: AuthCall) -> Response:
        refused = await call_auth("/logout", {}, {"Authorization": f"Bearer {principal.bearer}"})
        if refused is not None:
            return refused
        return Response(status_code=204, headers=NO_STORE)

    async def _end_families(self, principal: Principal, fams: list[str], keep: str = "") -> bool:
        ended = await self.refresh.revoke(principal.uid, fams, keep)
        if self.denylist is not None:
            for fam in ended:
                await self.denylist.add_family(fam)
        return bool(ended)

    async def sessions(self, principal: Principal) -> list[SessionInfo]:
        families = await self.refresh.families(principal.uid)
        return [
            SessionInfo(f.handle, f.created, f.last_seen, f.user_agent, f.ip, current=f.fam == principal.fam)
            for f in sorted(families, key=lambda f: f.created)
        ]

    async def end(self, principal: Principal, handle: str) -> bool:
        for family in await self.refresh.families(principal.uid):
            if family.handle == handle:
                return await self._end_families(principal, [family.fam])
        return False

    async def end_all(self, principal: Principal, keep_current: bool) -> None:
        await self._end_families(principal, [], keep=(principal.fam or "") if keep_current else "")

    async def aclose(self) -> None:
        if self.jwks is not None:
            await self.jwks.aclose()


_USERNAME = re.compile(r"[a-z0-9_.-]{3,32}")


class CookieAuthenticator(Authenticator):
    """AUTH_MODE=cookie, the story's first stage and unsafe on purpose: the browser carries the identity
    itself (`user=alice`) and the password beside it, in the clear; every replica believes the `user` cookie
    with no server state. It scales perfectly, and anyone can edit a cookie, and a captured one is the
    password, and logout cannot take back what the server never stored."""

    challenge = 'Cookie realm="scaleout", cookie-name="user"'

    async def authenticate(self, headers: list[tuple[bytes, bytes]]) -> Principal:
        try:
            user = single_cookie(headers, "user")
        except Ambiguous as exc:
            raise NotAuthenticated("ambiguous") from exc
        if user is None:
            raise NotAuthenticated("missing")
        if not _USERNAME.fullmatch(user):
            raise NotAuthenticated("malformed")
        return Principal("", user, "")

    def _cookie(self, name: str, value: str, max_age: int) -> str:
        return f"{name}={value}; Path=/; SameSite=Lax; Max-Age={max_age}"  # no HttpOnly: as naive sites did

    async def login(self, headers: list[tuple[bytes, bytes]], grant: LoginGrant, replica: str) -> Response:
        from urllib.parse import quote

        response = JSONResponse(
            {"auth_mode": "cookie", "replica": replica, "expires_in": STAGE_COOKIE_TTL}, headers=NO_STORE
        )
        response.headers.append("Set-Cookie", self._cookie("user", grant.username, STAGE_COOKIE_TTL))
        response.headers.append(
            "Set-Cookie", self._cookie("password", quote(str(grant.body["password"]), safe=""), STAGE_COOKIE_TTL)
        )
        return response

    async def logout(self, principal: Principal, call_auth: AuthCall) -> Response:
        response = Response(status_code=204, headers=NO_STORE)
        # The browser forgets; the server has nothing to forget, so a captured cookie keeps working.
        response.headers.append("Set-Cookie", self._cookie("user", "", 0))
        response.headers.append("Set-Cookie", self._cookie("password", "", 0))
        return response

    def allows_write(self, headers: list[tuple[bytes, bytes]], principal: Principal) -> bool:
        return True  # naive sites had no CSRF defence either

    async def sessions(self, principal: Principal) -> list[SessionInfo]:
        return []  # nothing is stored on the server

    async def end(self, principal: Principal, handle: str) -> bool:
        return False

    async def end_all(self, principal: Principal, keep_current: bool) -> None:
        """Nothing to end: the server never stored a session."""


# The cookie stage's own cookies (`user`, and the password in the clear): short-lived, since a browser sends
# them to every port of the host (cookies ignore ports), and cleared by any login or logout in another mode.
STAGE_COOKIES = ("user", "password")
STAGE_COOKIE_TTL = 600


def forget_stage_cookies(headers: list[tuple[bytes, bytes]], response: Response) -> None:
    """Clear the cookie stage's cookies that a request still carries (a lab switched from AUTH_MODE=cookie)."""
    for name in STAGE_COOKIES:
        try:
            carried = single_cookie(headers, name) is not None
        except (Ambiguous, Malformed):
            carried = True
        if carried:
            response.headers.append("Set-Cookie", f"{name}=; Path=/; SameSite=Lax; Max-Age=0")


def forget_cookies(authn: Authenticator, response: Response) -> None:
    """Clear the session cookies on a response that ended the caller's own session (cookie modes only)."""
    if isinstance(authn, SessionAuthenticator):
        response.headers.append("Set-Cookie", authn.set_cookie(authn.cookie_name, "", 0, http_only=True))
        response.headers.append("Set-Cookie", authn.set_cookie(CSRF_COOKIE, "", 0, http_only=False))
