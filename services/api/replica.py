"""What one API replica is made of, built once at start-up: its authenticator (chosen from the settings
in one place), its client to the auth service, and the calls it makes there."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
from fastapi import Request
from starlette.responses import Response

from scaleout.core.authn import (
    Authenticator,
    CookieAuthenticator,
    JWTAuthenticator,
    MemorySessionAuthenticator,
    RedisSessionAuthenticator,
)
from scaleout.core.config import AuthMode, JWTAlg, JWTRevocation, SessionStore, Settings
from scaleout.core.credentials import header_value
from scaleout.core.jwks import JWKSClient
from scaleout.core.keys import hs256_key
from scaleout.core.keyspace import Keyspace
from scaleout.core.revocation import Denylist, RefreshTokens
from scaleout.core.sessions import MemorySessions, RedisSessions
from scaleout.core.store import Reads, Store, StoreUnavailable
from scaleout.core.tokens import token_verifier
from scaleout.core.web import JSONResponse, error


async def build_authenticator(settings: Settings, store: Store, reads: Reads, http: httpx.AsyncClient) -> Authenticator:
    """The one place that looks at AUTH_MODE and SESSION_STORE."""
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
        denylist = (
            Denylist(store, reads, settings.access_ttl + settings.jwt_leeway)
            if settings.jwt_revocation is JWTRevocation.denylist
            else None
        )
        keyspace = Keyspace(settings.secret("session_key").encode())
        refresh = RefreshTokens(store, keyspace, settings.refresh_ttl, settings.max_sessions_per_user)
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
            settings.replica_id,
        )
        await replicated.catch_up()  # before this replica reports healthy
        return MemorySessionAuthenticator(settings, replicated)
    if settings.session_store is SessionStore.memory:
        memory = MemorySessions(
            settings.session_idle_ttl, settings.session_absolute_ttl, settings.max_sessions_per_user
        )
        return MemorySessionAuthenticator(settings, memory)
    return RedisSessionAuthenticator(settings, RedisSessions.for_settings(settings, store, reads))


@dataclass(slots=True)
class Replica:
    """What every request reads: plain slots, not Starlette's `State` lookups. `authn` and `http` are set
    by the app's lifespan, once the authenticator's dependencies answer."""

    settings: Settings
    name: str = field(init=False)
    authn: Authenticator = field(init=False)
    http: httpx.AsyncClient = field(init=False)
    store: Store = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.settings.replica_id

    async def ready(self) -> bool:
        """Ready when what `/api/me` reads answers: Redis, where sessions or the denylist live. The JWKS was
        fetched before this replica served anything."""
        s = self.settings
        reads_redis = (s.auth_mode is AuthMode.session and s.session_store is SessionStore.redis) or (
            s.auth_mode is AuthMode.jwt and s.jwt_revocation is JWTRevocation.denylist
        )
        return await self.store.answers() if reads_redis else True

    @property
    def mode_fields(self) -> dict[str, str]:
        s = self.settings
        return {
            "auth_mode": str(s.auth_mode),
            "session_store": str(s.session_store),
            "session_cache": str(s.session_cache),
        }

    async def post_auth(
        self, path: str, json: dict[str, object], headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """POST to the auth service; unreachable is a `StoreUnavailable` (503), like a store that is down."""
        try:
            return await self.http.post(path, json=json, headers=headers)
        except httpx.HTTPError as exc:
            raise StoreUnavailable("auth service unavailable") from exc

    async def call_auth(self, path: str, json: dict[str, object], headers: dict[str, str]) -> Response | None:
        """POST to the auth service: None when it agreed, else the error response to hand on."""
        upstream = await self.post_auth(path, json, headers)
        return None if upstream.status_code in (200, 201, 204) else relay_error(upstream)


def relay_error(upstream: httpx.Response) -> JSONResponse:
    """The auth service's refusal, handed on (its 5xx as our 503: the caller may retry)."""
    headers = {k: v for k, v in upstream.headers.items() if k.lower() in ("retry-after", "www-authenticate")}
    if upstream.status_code >= 500:
        return error(503, "auth service unavailable", {"Retry-After": upstream.headers.get("retry-after", "1")})
    try:
        detail = str(upstream.json().get("detail", "request refused"))
    except ValueError:
        detail = "request refused"
    return error(upstream.status_code, detail, headers)


def client_ip(request: Request) -> str:
    # nginx overwrites X-Real-IP with the address it saw; X-Forwarded-For is the client's to forge.
    return (header_value(request.scope["headers"], b"x-real-ip") or (request.client.host if request.client else ""))[
        :64
    ] or "unknown"


def user_agent(request: Request) -> str:
    return (header_value(request.scope["headers"], b"user-agent") or "")[:256]
