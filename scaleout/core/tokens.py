"""JWT issuing, and the one strict verifier every replica uses.

python-jose is lenient (it accepts several algorithms for one key, leaves `exp` optional, tolerates odd
encodings), so it is only used here for the cryptography: key objects sign and verify raw bytes. Parsing and
every claim check are done by `TokenVerifier` itself, refusing anything RFC 8725 warns about.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from scaleout.core.config import Settings
from scaleout.core.keys import BoundKey


class TokenKind(StrEnum):
    access = "access"
    refresh = "refresh"


# Distinct `typ` and `aud` keep the kinds apart: a refresh token is never accepted as an access token.
TYP = {TokenKind.access: "at+jwt", TokenKind.refresh: "rt+jwt"}
REFRESH_AUDIENCE = "scaleout-refresh"

_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
_JTI = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_MAX_NUMERIC_DATE = 10**11  # year ~5138; bigger "dates" are garbage, not tokens
# The order of P-256: an ECDSA signature (r, s) has the twin (r, n - s); only the low one is accepted.
_P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_CACHE_SIZE = 10_000


class TokenError(Exception):
    """Why a token was refused. The reason goes to metrics and logs, never to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnknownKid(TokenError):
    def __init__(self, kid: str) -> None:
        super().__init__("unknown_kid")
        self.kid = kid


@dataclass(frozen=True, slots=True)
class Claims:
    sub: str  # the account's stable id, never its name
    name: str  # the username, for display
    jti: str
    fam: str
    exp: int
    iat: int
    kind: TokenKind


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode_canonical(segment: str) -> bytes:
    """Decode base64url, refusing padding, stray bits and any other non-canonical spelling."""
    if len(segment) % 4 == 1:
        raise TokenError("bad_base64")
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenError("bad_base64") from exc
    if b64url_encode(raw) != segment:
        raise TokenError("bad_base64")
    return raw


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise TokenError("duplicate_member")
    return out


def _json_object(raw: bytes) -> dict[str, Any]:
    import json  # stdlib json: orjson has no duplicate-key hook

    try:
        value = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise TokenError("bad_json") from exc
    if not isinstance(value, dict):
        raise TokenError("bad_json")
    return value


def _int_claim(claims: Mapping[str, Any], name: str, required: bool = True) -> int | None:
    value = claims.get(name)
    if value is None and not required and name not in claims:
        return None
    if type(value) is not int or not 0 <= value < _MAX_NUMERIC_DATE:
        raise TokenError(f"bad_{name}")
    return value


def _str_claim(claims: Mapping[str, Any], name: str, max_len: int = 128) -> str:
    value = claims.get(name)
    if type(value) is not str or not 0 < len(value) <= max_len:
        raise TokenError(f"bad_{name}")
    return value


class TokenIssuer:
    """Signs access and refresh tokens with the current signing key."""

    def __init__(self, issuer: str, audience: str, access_ttl: int, refresh_ttl: int) -> None:
        self.issuer = issuer
        self.audience = audience
        self.ttl = {TokenKind.access: access_ttl, TokenKind.refresh: refresh_ttl}

    def issue(
        self, signer: BoundKey, kind: TokenKind, sub: str, name: str, fam: str, not_after: int | None = None
    ) -> tuple[str, Claims]:
        """A signed token; `not_after` caps its expiry (a refresh family's absolute end)."""
        now = int(time.time())
        exp = now + self.ttl[kind] if not_after is None else min(now + self.ttl[kind], not_after)
        claims = Claims(sub=sub, name=name, jti=secrets.token_urlsafe(16), fam=fam, exp=exp, iat=now, kind=kind)
        payload = {
            "iss": self.issuer,
            "aud": self.audience if kind is TokenKind.access else REFRESH_AUDIENCE,
            "sub": claims.sub,
            "name": claims.name,
            "iat": claims.iat,
            "exp": claims.exp,
            "jti": claims.jti,
            "fam": claims.fam,
        }
        header = {"alg": signer.alg, "typ": TYP[kind], "kid": signer.kid}
        signing_input = f"{b64url_encode(orjson.dumps(header))}.{b64url_encode(orjson.dumps(payload))}"
        signature = low_s(signer.alg, signer.key.sign(signing_input.encode("ascii")))
        return f"{signing_input}.{b64url_encode(signature)}", claims


def low_s(alg: str, signature: bytes) -> bytes:
    """ES256 signatures in their canonical (low-S) form; other algorithms' unchanged."""
    if alg != "ES256" or len(signature) != 64:
        return signature
    s = int.from_bytes(signature[32:], "big")
    if s > _P256_N // 2:
        return signature[:32] + (_P256_N - s).to_bytes(32, "big")
    return signature


class TokenVerifier:
    """Verifies a compact JWS strictly; accepted tokens are cached by their exact string.

    The cache only skips the signature check: expiry, and the key still being in the key set, are checked
    on every call, and revocation lists are consulted by the caller after this returns.
    """

    def __init__(
        self,
        keys: Mapping[str, BoundKey],
        issuer: str,
        audience: str,
        leeway: int = 0,
        max_bytes: int = 4096,
        max_lifetime: Mapping[TokenKind, int] | None = None,
    ) -> None:
        self.keys: Mapping[str, BoundKey] = dict(keys)
        self.issuer = issuer
        self.audience = {TokenKind.access: audience, TokenKind.refresh: REFRESH_AUDIENCE}
        self.leeway = leeway
        self.max_bytes = max_bytes
        # A token living longer than we ever issue is not ours to trust, whoever signed it.
        self.max_lifetime = dict(max_lifetime or {TokenKind.access: 3600, TokenKind.refresh: 30 * 86400})
        self._cache: OrderedDict[str, tuple[str, Claims]] = OrderedDict()

    def set_keys(self, keys: Mapping[str, BoundKey]) -> None:
        self.keys = dict(keys)

    def verify(self, token: str, kind: TokenKind = TokenKind.access) -> Claims:
        cached = self._cache.get(token)
        if cached is not None and cached[0] in self.keys and cached[1].kind is kind:
            self._check_times(cached[1].exp, cached[1].iat, None)
            return cached[1]
        claims, kid = self._verify_uncached(token, kind)
        self._cache[token] = (kid, claims)
        if len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        return claims

    def _check_times(self, exp: int, iat: int, nbf: int | None) -> None:
        now = int(time.time())
        if now >= exp + self.leeway:  # exp == now is already expired
            raise TokenError("expired")
        if iat > now + self.leeway:
            raise TokenError("iat_in_future")
        if nbf is not None and nbf > now + self.leeway:
            raise TokenError("not_yet_valid")

    def _verify_uncached(self, token: str, kind: TokenKind) -> tuple[Claims, str]:
        if len(token) > self.max_bytes:
            raise TokenError("too_large")
        if not _SHAPE.match(token):  # exactly three base64url segments: no JWE, no padding, no extras
            raise TokenError("malformed")
        header_b64, payload_b64, signature_b64 = token.split(".")
        header = _json_object(b64url_decode_canonical(header_b64))

        if "crit" in header:  # we understand no extension, so any critical one must be refused
            raise TokenError("crit")
        alg, kid, typ = header.get("alg"), header.get("kid"), header.get("typ")
        if type(alg) is not str or type(kid) is not str:
            raise TokenError("bad_header")
        if typ != TYP[kind]:
            raise TokenError("wrong_typ")
        # `kid` only ever indexes our own key set; `jwk`, `jku`, `x5u`, `x5c` are never read.
        bound = self.keys.get(kid)
        if bound is None:
            raise UnknownKid(kid)
        if alg != bound.alg:  # one algorithm per key: this is what stops alg=none and RS256->HS256
            raise TokenError("wrong_alg")
        signature = b64url_decode_canonical(signature_b64)
        if not signature:
            raise TokenError("bad_signature")
        if bound.alg == "ES256":
            if len(signature) != 64:
                raise TokenError("bad_signature")
            if int.from_bytes(signature[32:], "big") > _P256_N // 2:
                raise TokenError("non_canonical_signature")  # (r, n - s) would verify too: one spelling only
        try:
            valid = bound.key.verify(f"{header_b64}.{payload_b64}".encode("ascii"), signature)
        except Exception:  # a malformed signature must read as invalid, whatever the backend raises
            valid = False
        if not valid:
            raise TokenError("bad_signature")

        claims = _json_object(b64url_decode_canonical(payload_b64))
        if claims.get("iss") != self.issuer or type(claims.get("iss")) is not str:
            raise TokenError("bad_iss")
        if claims.get("aud") != self.audience[kind] or type(claims.get("aud")) is not str:
            raise TokenError("bad_aud")
        exp = _int_claim(claims, "exp")
        iat = _int_claim(claims, "iat")
        nbf = _int_claim(claims, "nbf", required=False)
        assert exp is not None and iat is not None
        self._check_times(exp, iat, nbf)
        if exp - iat > self.max_lifetime[kind] + self.leeway:
            raise TokenError("lifetime_too_long")
        jti = _str_claim(claims, "jti")
        if not _JTI.match(jti):
            raise TokenError("bad_jti")
        return (
            Claims(
                sub=_str_claim(claims, "sub", 64),
                name=_str_claim(claims, "name", 32),
                jti=jti,
                fam=_str_claim(claims, "fam", 64),
                exp=exp,
                iat=iat,
                kind=kind,
            ),
            kid,
        )


def token_verifier(settings: Settings, keys: Mapping[str, BoundKey] | None = None) -> TokenVerifier:
    """The verifier both services use, from the settings: issuer, audience, leeway, size and lifetime caps.
    Replicas start with no key and learn them from the JWKS (or the HS256 secret)."""
    return TokenVerifier(
        keys or {},
        settings.jwt_issuer,
        settings.jwt_audience,
        settings.jwt_leeway,
        settings.jwt_max_bytes,
        {TokenKind.access: settings.access_ttl, TokenKind.refresh: settings.refresh_ttl},
    )
