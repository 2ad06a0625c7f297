"""A replica's view of the auth service's public keys: fetched at start, refreshed on an unknown `kid`."""

from __future__ import annotations

import asyncio
import time

import httpx

from scaleout.config import JWTAlg
from scaleout.keys import KeyUnusable, keys_from_jwks
from scaleout.tokens import TokenVerifier

JWKS_PATH = "/.well-known/jwks.json"


class JWKSClient:
    def __init__(self, http: httpx.AsyncClient, alg: JWTAlg, verifier: TokenVerifier, min_interval: float = 1.0):
        self.http = http
        self.alg = alg
        self.verifier = verifier
        # A flood of tokens with made-up `kid`s must not become a flood of requests to the auth service.
        self.min_interval = min_interval
        self._last_fetch = 0.0
        self._lock = asyncio.Lock()

    async def fetch(self) -> bool:
        """Replace the verifier's keys with the current JWKS; False when the auth service did not answer."""
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

    async def refresh_for_unknown_kid(self, kid: str) -> bool:
        """Refetch at most once per `min_interval`; True when `kid` is now known."""
        async with self._lock:
            if kid in self.verifier.keys:
                return True
            if time.monotonic() - self._last_fetch < self.min_interval:
                return False
            await self.fetch()
            return kid in self.verifier.keys
