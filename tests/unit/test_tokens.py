"""Unit tests of the token codec and the strict verifier (RFC 8725 attack classes)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from helpers import b64, forge
from jose import jwk

from scaleout.core.config import JWTAlg
from scaleout.core.keys import BoundKey, KeyRing, KeyUnusable, hs256_key, keys_from_jwks
from scaleout.core.tokens import TokenError, TokenIssuer, TokenKind, TokenVerifier, UnknownKid, low_s

ISS, AUD = "scaleout-auth", "scaleout-api"


@pytest.fixture(scope="module", params=["RS256", "ES256"])
def ring(request, tmp_path_factory) -> KeyRing:
    return KeyRing(tmp_path_factory.mktemp("keys"), JWTAlg(request.param), grace=3600)


@pytest.fixture
def issuer() -> TokenIssuer:
    return TokenIssuer(ISS, AUD, access_ttl=60, refresh_ttl=600)


@pytest.fixture
def verifier(ring: KeyRing) -> TokenVerifier:
    return TokenVerifier(ring.verifiers, ISS, AUD)


def claims(**changes: object) -> dict:
    now = int(time.time())
    base = {
        "iss": ISS,
        "aud": AUD,
        "sub": "alice",
        "name": "alice",
        "iat": now,
        "exp": now + 60,
        "jti": "j" * 22,
        "fam": "f" * 22,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def header(ring: KeyRing, **changes: object) -> dict:
    h = {"alg": str(ring.alg), "typ": "at+jwt", "kid": ring.signer.kid}
    h.update(changes)
    return {k: v for k, v in h.items() if v is not ...}


def reason(verifier: TokenVerifier, token: str, kind: TokenKind = TokenKind.access) -> str:
    with pytest.raises(TokenError) as exc:
        verifier.verify(token, kind)
    return exc.value.reason


def test_issued_tokens_verify_and_carry_the_required_claims(ring, issuer, verifier) -> None:
    token, issued = issuer.issue(ring.signer, TokenKind.access, "alice", "alice", "fam" * 8)
    got = verifier.verify(token)
    assert got == issued
    assert got.exp - got.iat == 60
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert set(payload) == {"iss", "aud", "sub", "name", "iat", "exp", "jti", "fam"}


def test_key_objects_are_built_once_not_per_token(ring, issuer, monkeypatch) -> None:
    # python-jose re-parses a PEM string on every call; issuing and verifying must build no key at all.
    built = []
    real = jwk.construct
    monkeypatch.setattr(jwk, "construct", lambda *a, **k: built.append(a) or real(*a, **k))
    verifier = TokenVerifier(ring.verifiers, ISS, AUD)
    for _ in range(20):
        token, _ = issuer.issue(ring.signer, TokenKind.access, "alice", "alice", "f" * 22)
        verifier.verify(token)
    assert built == []


@pytest.mark.parametrize("alg", ["none", "None", "nOnE", "", "HS256", "RS512", "ES256K"])
def test_any_other_algorithm_is_refused(ring, verifier, alg) -> None:
    unsigned = forge(header(ring, alg=alg), claims(), None)
    assert reason(verifier, unsigned) == "malformed"  # empty signature segment
    with_junk_signature = unsigned + b64(b"x" * 32)
    assert reason(verifier, with_junk_signature) == "wrong_alg"


def test_empty_and_truncated_signatures_are_refused(ring, verifier) -> None:
    good = forge(header(ring), claims(), ring.signer)
    h, p, s = good.split(".")
    assert reason(verifier, f"{h}.{p}.") == "malformed"
    assert reason(verifier, f"{h}.{p}.{s[:-8]}") in ("bad_signature", "bad_base64", "non_canonical_signature")
    assert reason(verifier, f"{h}.{p}.{b64(b'')}AA") in ("bad_signature", "bad_base64")


def test_payload_edited_under_the_old_signature_is_refused(ring, verifier) -> None:
    h, _, s = forge(header(ring), claims(), ring.signer).split(".")
    assert reason(verifier, f"{h}.{b64(claims(sub='admin'))}.{s}") == "bad_signature"


def test_rs256_to_hs256_key_confusion_with_the_public_key_in_every_encoding(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path, JWTAlg.RS256, grace=60)
    verifier = TokenVerifier(ring.verifiers, ISS, AUD)
    public = ring.verifiers[ring.signer.kid].key
    pem = public.to_pem()
    crypto_key = serialization.load_pem_public_key(pem)
    der = crypto_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    jwk_json = json.dumps(public.to_dict()).encode()
    for secret in (pem, der, jwk_json, pem.strip()):
        # python-jose itself refuses PEM-looking HMAC secrets, so sign the HMAC by hand.
        import hashlib
        import hmac

        h = b64(header(ring, alg="HS256"))
        p = b64(claims())
        sig = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
        assert reason(verifier, f"{h}.{p}.{b64(sig)}") == "wrong_alg"


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"exp": ...}, "bad_exp"),
        ({"exp": "9999999999"}, "bad_exp"),
        ({"exp": None}, "bad_exp"),
        ({"exp": [1]}, "bad_exp"),
        ({"exp": 10**30}, "bad_exp"),
        ({"exp": True}, "bad_exp"),
        ({"exp": 1.5e9}, "bad_exp"),
        ({"iat": ...}, "bad_iat"),
        ({"iat": int(time.time()) + 3600}, "iat_in_future"),
        ({"nbf": int(time.time()) + 3600}, "not_yet_valid"),
        ({"nbf": "soon"}, "bad_nbf"),
        ({"iss": ...}, "bad_iss"),
        ({"iss": "evil"}, "bad_iss"),
        ({"iss": ["scaleout-auth"]}, "bad_iss"),
        ({"aud": ...}, "bad_aud"),
        ({"aud": "other"}, "bad_aud"),
        ({"aud": ["scaleout-api"]}, "bad_aud"),
        ({"sub": None}, "bad_sub"),
        ({"sub": 7}, "bad_sub"),
        ({"name": ...}, "bad_name"),
        ({"name": "x" * 33}, "bad_name"),
        ({"exp": int(time.time()) + 10**9}, "lifetime_too_long"),
        ({"jti": ...}, "bad_jti"),
        ({"jti": "short"}, "bad_jti"),
        ({"fam": {}}, "bad_fam"),
    ],
)
def test_claims_are_checked_strictly(ring, verifier, changes, why) -> None:
    assert reason(verifier, forge(header(ring), claims(**changes), ring.signer)) == why


def test_exp_equal_to_now_is_expired_and_leeway_is_configurable(ring) -> None:
    now = int(time.time())
    token = forge(header(ring), claims(exp=now, iat=now - 10), ring.signer)
    assert reason(TokenVerifier(ring.verifiers, ISS, AUD), token) == "expired"
    assert TokenVerifier(ring.verifiers, ISS, AUD, leeway=30).verify(token).sub == "alice"


def test_refresh_and_access_tokens_are_kept_apart(ring, issuer, verifier) -> None:
    refresh, _ = issuer.issue(ring.signer, TokenKind.refresh, "alice", "alice", "f" * 22)
    access, _ = issuer.issue(ring.signer, TokenKind.access, "alice", "alice", "f" * 22)
    assert reason(verifier, refresh, TokenKind.access) == "wrong_typ"
    assert reason(verifier, access, TokenKind.refresh) == "wrong_typ"
    # Even with the typ header rewritten, the audience tells them apart (and the signature breaks).
    relabelled = forge(header(ring), json.loads(base64.urlsafe_b64decode(refresh.split(".")[1] + "==")), ring.signer)
    assert reason(verifier, relabelled) == "bad_aud"


def test_unknown_crit_is_refused_and_key_urls_are_never_followed(ring, verifier) -> None:
    assert reason(verifier, forge(header(ring, crit=["exp"]), claims(), ring.signer)) == "crit"
    # jku/x5u/jwk/x5c are ignored: verification still uses our key only (this token is genuinely ours).
    token = forge(
        header(ring, jku="http://203.0.113.1/jwks", x5u="http://203.0.113.1/x", jwk={"kty": "oct"}, x5c=["MII"]),
        claims(),
        ring.signer,
    )
    assert verifier.verify(token).sub == "alice"


@pytest.mark.parametrize("kid", ["../../etc/passwd", "' OR 1=1 --", "", "x" * 500, "\u0000"])
def test_kid_only_indexes_our_own_keys(ring, verifier, kid) -> None:
    with pytest.raises(UnknownKid):
        verifier.verify(forge(header(ring, kid=kid), claims(), ring.signer))


def test_non_canonical_shapes_are_refused(ring, verifier) -> None:
    good = forge(header(ring), claims(), ring.signer)
    h, p, s = good.split(".")
    for token in (
        f"{h}=.{p}.{s}",  # padding
        f"{h}.{p}.{s}.{s}",  # extra segment
        f"{h}.{p}.{s}.x.y",  # JWE shape
        f"{h}.{p}",  # two segments
        f"{h}.{p}.{s[:-1]}{'B' if s[-1] == 'A' else 'A'}",  # different bits in the last character
        f"{h}.{p}.+{s[1:]}",  # standard base64 alphabet
        " " + good,
    ):
        with pytest.raises(TokenError):
            verifier.verify(token)
    assert reason(verifier, "a." * 3000 + "b") == "too_large"


def test_duplicate_claims_and_non_object_json_are_refused(ring, verifier) -> None:
    h = b64(header(ring))
    raw = json.dumps(claims())[:-1] + ', "sub": "admin"}'
    p = b64(raw.encode())
    sig = low_s(ring.signer.alg, ring.signer.key.sign(f"{h}.{p}".encode()))
    assert reason(verifier, f"{h}.{p}.{b64(sig)}") == "duplicate_member"
    for payload in (b"[]", b"null", b"\xff\xfe", b'{"a":' * 300):
        p = b64(payload)
        sig = low_s(ring.signer.alg, ring.signer.key.sign(f"{h}.{p}".encode()))
        assert reason(verifier, f"{h}.{p}.{b64(sig)}") == "bad_json"


def test_cached_token_is_still_rechecked_for_expiry_and_key_removal(ring, issuer) -> None:
    verifier = TokenVerifier(ring.verifiers, ISS, AUD)
    token = forge(header(ring), claims(exp=int(time.time()) + 2), ring.signer)
    assert verifier.verify(token).sub == "alice"
    verifier.set_keys({})
    with pytest.raises(UnknownKid):
        verifier.verify(token)


def test_hs256_refuses_short_or_low_entropy_secrets() -> None:
    import secrets

    for weak in (
        "too-short",
        "a" * 64,
        "0123456789abcdef0123456789abcdef",  # 32 characters, but 24 bytes of base64url and a pattern
        "correct horse battery staple, correct horse battery staple",  # not base64url at all
        "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB",  # base64url of 36 times "A"
    ):
        with pytest.raises(KeyUnusable, match="JWT_SECRET"):
            hs256_key(weak)
    assert hs256_key(secrets.token_urlsafe(32)).alg == "HS256"


def test_es256_accepts_only_the_low_s_twin_of_a_signature(tmp_path: Path, issuer) -> None:
    from scaleout.core.tokens import _P256_N

    ring = KeyRing(tmp_path, JWTAlg.ES256, grace=60)
    verifier = TokenVerifier(ring.verifiers, ISS, AUD)
    for _ in range(8):  # the signer's s is random: both halves come up
        token, _ = issuer.issue(ring.signer, TokenKind.access, "alice", "alice", "f" * 22)
        h, p, sig = token.split(".")
        raw = base64.urlsafe_b64decode(sig + "==")
        assert int.from_bytes(raw[32:], "big") <= _P256_N // 2  # we only ever issue the low one
        twin = raw[:32] + (_P256_N - int.from_bytes(raw[32:], "big")).to_bytes(32, "big")
        assert verifier.verify(token).sub == "alice"
        assert reason(TokenVerifier(ring.verifiers, ISS, AUD), f"{h}.{p}.{b64(twin)}") == "non_canonical_signature"


def test_token_lifetime_is_capped_whoever_signed_it(ring) -> None:
    now = int(time.time())
    verifier = TokenVerifier(ring.verifiers, ISS, AUD, max_lifetime={TokenKind.access: 60, TokenKind.refresh: 600})
    assert verifier.verify(forge(header(ring), claims(iat=now, exp=now + 60), ring.signer)).sub == "alice"
    assert reason(verifier, forge(header(ring), claims(iat=now, exp=now + 61), ring.signer)) == "lifetime_too_long"


def test_key_rotation_keeps_old_public_key_until_its_tokens_expire(tmp_path: Path, issuer) -> None:
    ring = KeyRing(tmp_path, JWTAlg.ES256, grace=3600)
    old = ring.signer
    old_token, _ = issuer.issue(old, TokenKind.access, "alice", "alice", "f" * 22)
    new = ring.rotate()
    assert new.kid != old.kid and ring.signer.kid == new.kid
    assert {k["kid"] for k in ring.jwks()["keys"]} == {old.kid, new.kid}
    verifier = TokenVerifier(keys_from_jwks(ring.jwks(), JWTAlg.ES256), ISS, AUD)
    assert verifier.verify(old_token).sub == "alice"
    # Past the grace period the old key is pruned from disk and from the JWKS.
    expired = KeyRing(tmp_path, JWTAlg.ES256, grace=0)
    assert {k["kid"] for k in expired.jwks()["keys"]} == {new.kid}
    assert not (tmp_path / f"{old.kid}.pem").exists()


def test_jwks_parsing_keeps_only_public_keys_of_the_configured_algorithm(ring) -> None:
    doc = ring.jwks()
    doc["keys"].append({"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"})
    doc["keys"].append("garbage")
    keys = keys_from_jwks(doc, ring.alg)
    assert set(keys) == {ring.signer.kid}
    assert all(isinstance(k, BoundKey) for k in keys.values())
    with pytest.raises(KeyUnusable):
        keys_from_jwks({"nokeys": 1}, ring.alg)


def test_jwks_parsing_skips_an_entry_that_carries_a_private_key(ring, tmp_path: Path) -> None:
    private = ring._keys[ring.signer.kid].key.to_dict()  # has "d"
    assert "d" in private
    doc = {"keys": [{**private, "kid": "leaked", "alg": str(ring.alg)}, *ring.jwks()["keys"]]}
    assert set(keys_from_jwks(doc, ring.alg)) == {ring.signer.kid}
