"""A replica's view of the auth service's public keys: fetched at start, refreshed periodically and on an
unknown `kid`, so a rotated-out or revoked key stops verifying on every replica within seconds."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx

from scaleout.core.config import JWTAlg
from scaleout.core.keys import KeyUnusable, keys_from_jwks
from scaleout.core.tokens import TokenVerifier

JWKS_PATH = "/.well-known/jwks.json"


class JWKSClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        alg: JWTAlg,
        verifier: TokenVerifier,
        min_interval: float = 1.0,
        refresh_interval: float = 5.0,
    ) -> None:
        self.http = http
        self.alg = alg
        self.verifier = verifier
        # A flood of tokens with made-up `kid`s must not become a flood of requests to the auth service.
        self.min_interval = min_interval
        self.refresh_interval = refresh_interval
        self._last_fetch = 0.0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._pending: asyncio.Task[None] | None = None  # the one refetch for unknown kids, shared

    async def fetch(self) -> bool:
        """Replace the verifier's keys with the current JWKS; False when the auth service did not answer.

        An unreachable auth service leaves the keys as they were: replicas keep verifying without it.
        """
        self._last_fetch = time.monotonic()
        try:
            response = await self.http.get(JWKS_PATH)
            response.raise_for_status()
            keys = keys_from_jwks(response.json(), self.alg)
        except (httpx.HTTPError, ValueError, KeyUnusable):
            return False
        self.verifier.set_keys(keys)
        return True

    async def fetch_until_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.fetch() and self.verifier.keys:
                return True
            await asyncio.sleep(0.2)
        return False

    def start(self) -> None:
        """Refetch every `refresh_interval` seconds in the background."""
        self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_interval)
            async with self._lock:
                await self.fetch()

    async def refresh_for_unknown_kid(self, kid: str) -> bool:
        """Refetch for a `kid` not known here, at most once per `min_interval`; True when it is known then.

        Every request that meets an unknown `kid` awaits one shared refetch, scheduled no sooner than
        `min_interval` after the previous one: a token signed with a key made a moment after this replica's
        last fetch (a rotation, a revocation's new signer) is verified within a second instead of refused,
        while a flood of made-up `kid`s still costs the auth service one request a second, and none of them
        waits longer than that."""
        if kid in self.verifier.keys:
            return True
        if self._pending is None or self._pending.done():
            delay = max(0.0, self._last_fetch + self.min_interval - time.monotonic())
            self._pending = asyncio.get_running_loop().create_task(self._fetch_after(delay))
        await asyncio.shield(self._pending)  # a request that goes away does not cancel the others' refetch
        return kid in self.verifier.keys

    async def _fetch_after(self, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        async with self._lock:
            await self.fetch()

    async def aclose(self) -> None:
        for task in (self._task, self._pending):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
