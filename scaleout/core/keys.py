"""Signing keys: a rotating key ring on the auth service, and the verification keys a replica builds from JWKS.

Every key object is built once (python-jose re-parses a PEM on every call when handed a string, which costs
~100x a signature) and every key is bound to exactly one algorithm.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk
from jose.backends.base import Key

from scaleout.core.config import MIN_HS256_SECRET_BYTES, JWTAlg

_B64URL = frozenset(string.ascii_letters + string.digits + "-_")


class KeyUnusable(Exception):
    """A key that cannot be used (bad secret, unparsable JWKS entry)."""


@dataclass(frozen=True, slots=True)
class BoundKey:
    """A key object and the one algorithm it may be used with."""

    kid: str
    alg: str
    key: Key


def _new_private_pem(alg: JWTAlg) -> bytes:
    if alg is JWTAlg.RS256:
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg is JWTAlg.ES256:
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        raise KeyUnusable(f"{alg} has no key pair")
    pem: bytes = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem


def hs256_key(secret: str) -> BoundKey:
    """The HS256 key from JWT_SECRET: base64url (unpadded or padded) of at least 32 random bytes."""
    how = "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
    text = secret.strip()
    try:
        if not text or any(c not in _B64URL for c in text.rstrip("=")):
            raise ValueError("not base64url")
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:
        raise KeyUnusable(f"JWT_SECRET must be base64url-encoded random bytes for HS256; {how}") from exc
    # Random bytes of this length repeat little; a pattern, a word or a counter does.
    if len(raw) < MIN_HS256_SECRET_BYTES or len(set(raw)) < len(raw) // 2:
        raise KeyUnusable(
            f"JWT_SECRET must be at least {MIN_HS256_SECRET_BYTES} random bytes (base64url) for HS256; {how}"
        )
    kid = "hs-" + hashlib.sha256(raw).hexdigest()[:12]
    return BoundKey(kid, "HS256", jwk.construct(raw, "HS256"))


class KeyRing:
    """The auth service's asymmetric keys on disk: one active signer, retired keys kept for verification.

    Layout: ``<dir>/ring.json`` lists the keys with their state; ``<dir>/<kid>.pem`` holds each private key.
    A retired key stays in the JWKS for ``grace`` seconds (the longest token lifetime), then is pruned.
    """

    def __init__(self, directory: Path, alg: JWTAlg, grace: int) -> None:
        self.directory = directory
        self.alg = alg
        self.grace = grace
        self._entries: list[dict[str, Any]] = []
        self._mtime = 0
        self._keys: dict[str, BoundKey] = {}  # private keys, for signing
        self._public: dict[str, BoundKey] = {}  # their public halves, for verifying and the JWKS
        self.reload()
        if not self._active_entries():
            self.rotate()

    def _ring_file(self) -> Path:
        return self.directory / "ring.json"

    def _active_entries(self) -> list[dict[str, Any]]:
        return [e for e in self._entries if e["alg"] == self.alg and e["retired_at"] is None]

    def reload(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        ring = self._ring_file()
        self._entries = json.loads(ring.read_text())["keys"] if ring.exists() else []
        self._mtime = ring.stat().st_mtime_ns if ring.exists() else 0
        self._prune()
        self._keys, self._public = {}, {}
        for e in self._entries:
            pem = (self.directory / f"{e['kid']}.pem").read_bytes()
            private = jwk.construct(pem, e["alg"])
            self._keys[e["kid"]] = BoundKey(e["kid"], e["alg"], private)
            # A private EC key object cannot verify in python-jose: always verify with the public half.
            self._public[e["kid"]] = BoundKey(e["kid"], e["alg"], private.public_key())

    def _prune(self) -> None:
        now = time.time()
        keep = [e for e in self._entries if e["retired_at"] is None or now < e["retired_at"] + self.grace]
        for e in self._entries:
            if e not in keep:
                (self.directory / f"{e['kid']}.pem").unlink(missing_ok=True)
        self._entries = keep

    def _save(self) -> None:
        tmp = self._ring_file().with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"keys": self._entries}, indent=2))
        tmp.replace(self._ring_file())

    def rotate(self) -> BoundKey:
        """Make a new signing key; the previous one is retired but still verifies until its tokens expire."""
        now = time.time()
        for e in self._active_entries():
            e["retired_at"] = now
        kid = f"{self.alg.lower()}-{int(now)}-{secrets.token_hex(4)}"
        path = self.directory / f"{kid}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(_new_private_pem(self.alg))
        self._entries.append({"kid": kid, "alg": str(self.alg), "created": now, "retired_at": None})
        self._save()
        self.reload()
        return self.signer

    def revoke(self, kid: str) -> None:
        """Distrust a key at once (it is compromised): gone from the JWKS, its file deleted."""
        if not any(e["kid"] == kid for e in self._entries):
            raise KeyError(kid)
        self._entries = [e for e in self._entries if e["kid"] != kid]
        (self.directory / f"{kid}.pem").unlink(missing_ok=True)
        self._save()
        self.reload()
        if not self._active_entries():
            self.rotate()

    def reload_if_changed(self) -> bool:
        """Re-read the ring when another process (`scaleout rotate-keys`, `revoke-key`) changed it."""
        try:
            mtime = self._ring_file().stat().st_mtime_ns
        except OSError:
            return False
        if mtime == self._mtime:
            return False
        self.reload()
        return True

    @property
    def signer(self) -> BoundKey:
        return self._keys[self._active_entries()[-1]["kid"]]

    @property
    def verifiers(self) -> dict[str, BoundKey]:
        return dict(self._public)

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        keys = []
        for bound in self._public.values():
            public = bound.key.to_dict()
            public.update({"kid": bound.kid, "alg": bound.alg, "use": "sig"})
            keys.append(public)
        return {"keys": keys}


_KTY_FOR_ALG = {"RS256": "RSA", "ES256": "EC"}


def keys_from_jwks(document: Any, alg: JWTAlg) -> dict[str, BoundKey]:
    """Public keys from a JWKS, keeping only entries of the configured algorithm (never trusting `alg` alone)."""
    out: dict[str, BoundKey] = {}
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeyUnusable("JWKS without a keys list")
    for entry in document["keys"]:
        if not isinstance(entry, dict):
            continue
        kid = entry.get("kid")
        if entry.get("alg") != alg or entry.get("kty") != _KTY_FOR_ALG.get(alg) or not isinstance(kid, str):
            continue
        if "d" in entry:  # a private key has no business in a JWKS
            continue
        out[kid] = BoundKey(kid, str(alg), jwk.construct(entry, str(alg)))
    return out
