"""JWT attacks (RFC 8725, jwt_tool's classes) sent through nginx to every replica of a running cluster."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socket
import time

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from helpers import b64, bearer, client, decode_part, forge, new_user, signing_key, valid_claims

from scaleout.lab.drivers.base import ClusterError
from scaleout.lab.drivers.local import Cluster

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(start_cluster) -> Cluster:
    return start_cluster(auth_mode="jwt", jwt_revocation="denylist", jwt_alg="RS256")


@pytest.fixture(scope="module")
def user(cluster: Cluster) -> tuple[str, dict]:
    with client(cluster) as c:
        name, login = new_user(c)
    return name, login.json()


def _hmac_token(header: dict, payload: dict, secret: bytes) -> str:
    signing_input = f"{b64(header)}.{b64(payload)}"
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def attacks(cluster: Cluster, name: str, good: str, refresh: str) -> dict[str, str]:
    key = signing_key(cluster)
    header = decode_part(good, 0)
    now = int(time.time())
    h, p, s = good.split(".")
    public = key.key.public_key()
    pem = public.to_pem()
    der = serialization.load_pem_public_key(pem).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk_json = json.dumps(public.to_dict()).encode()

    def signed(**changes: object) -> str:
        return forge(header, valid_claims(cluster, str(changes.pop("sub", name)), **changes), key)

    out = {
        **{
            f"alg {alg!r}": forge({**header, "alg": alg}, valid_claims(cluster, name))
            for alg in ("none", "None", "nOnE", "")
        },
        "alg none with a junk signature": forge({**header, "alg": "none"}, valid_claims(cluster, name)) + "AAAA",
        "empty signature": f"{h}.{p}.",
        "truncated signature": f"{h}.{p}.{s[:-10]}",
        "payload edited under the old signature": f"{h}.{b64(valid_claims(cluster, 'admin'))}.{s}",
        **{
            f"RS256->HS256 with the public key as {label}": _hmac_token(
                {**header, "alg": "HS256"}, valid_claims(cluster, name), secret
            )
            for label, secret in (("PEM", pem), ("DER", der), ("JWK", jwk_json))
        },
        "missing exp": signed(exp=...),
        "exp == now": signed(exp=now),
        "expired": signed(iat=now - 100, exp=now - 50),
        "nbf in the future": signed(nbf=now + 600),
        "iat in the future": signed(iat=now + 600),
        "missing iss": signed(iss=...),
        "foreign iss": signed(iss="https://evil.example"),
        "missing aud": signed(aud=...),
        "foreign aud": signed(aud="another-api"),
        "aud as a list": signed(aud=[cluster.settings.jwt_audience]),
        "exp null": signed(exp=None),
        "exp string": signed(exp=str(now + 60)),
        "exp huge": signed(exp=10**40),
        "exp float": signed(exp=now + 60.5),
        "sub list": forge(header, {**valid_claims(cluster, name), "sub": [name]}, key),
        "unknown crit": forge({**header, "crit": ["x-custom"], "x-custom": 1}, valid_claims(cluster, name), key),
        "kid path traversal": forge({**header, "kid": "../../../../dev/null"}, valid_claims(cluster, name), key),
        "kid injection": forge({**header, "kid": "x' UNION SELECT 'secret"}, valid_claims(cluster, name), key),
        "refresh token as access token": refresh,
        "padded base64": f"{h}==.{p}.{s}",
        "extra segment": f"{good}.{s}",
        "JWE shape": f"{h}.{p}.{s}.{s}.{s}",
        "over the size cap": signed(pad="x" * 5000),
        "garbage": "not-a-token",
    }
    return out


def test_every_attack_is_refused_on_every_replica_with_one_generic_answer(cluster: Cluster, user) -> None:
    name, tokens = user
    with client(cluster) as c:
        for label, token in attacks(cluster, name, tokens["access_token"], tokens["refresh_token"]).items():
            responses = [c.get("/api/me", headers=bearer(token)) for _ in range(3)]
            assert [r.status_code for r in responses] == [401] * 3, label
            assert {r.headers["x-replica"] for r in responses} == {"api-1", "api-2", "api-3"}, label
            for r in responses:
                assert r.json() == {"detail": "not authenticated"}, label
                assert r.headers["www-authenticate"] == 'Bearer realm="scaleout"', label
                assert "set-cookie" not in r.headers, label
        # After the flood, the genuine token still works everywhere.
        assert {c.get("/api/me", headers=bearer(tokens["access_token"])).status_code for _ in range(3)} == {200}


def test_key_url_headers_are_never_fetched(cluster: Cluster, user) -> None:
    name, _ = user
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/keys"
    connections: list[object] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            connections.append(listener.accept())

    header = {**decode_part(user[1]["access_token"], 0), "jku": url, "x5u": url, "kid": "attacker-key"}
    token = forge(header, valid_claims(cluster, name), signing_key(cluster))
    with client(cluster) as c:
        statuses = {c.get("/api/me", headers=bearer(token)).status_code for _ in range(3)}
    accept()
    listener.close()
    assert statuses == {401}  # an unknown kid, whatever jku says
    assert connections == []


def test_logout_revocation_holds_for_any_spelling_of_the_token(cluster: Cluster) -> None:
    with client(cluster) as c:
        _, login = new_user(c)
        token = login.json()["access_token"]
        assert c.post("/api/logout", headers=bearer(token)).status_code == 204
        h, p, s = token.split(".")
        for variant in (token, f"{h}.{p}.{s}=", f" {token}", f"{h}.{p}.{s}.{s}"):
            assert c.get("/api/me", headers=bearer(variant)).status_code == 401


def test_key_rotation_new_kid_signs_old_tokens_still_verify(cluster: Cluster) -> None:
    with client(cluster) as c:
        _, before = new_user(c)
        old_token = before.json()["access_token"]
        old_kid = decode_part(old_token, 0)["kid"]
        new_kid = cluster.rotate_keys()
        _, after = new_user(c)
        new_token = after.json()["access_token"]
        assert decode_part(new_token, 0)["kid"] == new_kid != old_kid
        kids = {k["kid"] for k in c.get("/auth/.well-known/jwks.json").json()["keys"]}
        assert {old_kid, new_kid} <= kids
        # Old tokens verify throughout; a replica fetches the JWKS when it first meets the new kid, at most
        # once a second (so a flood of made-up kids cannot flood the auth service).
        assert {c.get("/api/me", headers=bearer(old_token)).status_code for _ in range(3)} == {200}
        deadline = time.monotonic() + 5
        while {c.get("/api/me", headers=bearer(new_token)).status_code for _ in range(3)} != {200}:
            assert time.monotonic() < deadline, "replicas never learnt the new kid"
            time.sleep(0.2)
        assert {c.get("/api/me", headers=bearer(old_token)).status_code for _ in range(3)} == {200}


def test_hs256_refuses_to_start_with_a_short_secret(start_cluster) -> None:
    with pytest.raises(ClusterError, match="JWT_SECRET"):
        start_cluster(auth_mode="jwt", jwt_alg="HS256", jwt_secret="short-secret", replicas=1)


def test_unreachable_auth_service_on_login_is_503_not_500(cluster: Cluster) -> None:
    cluster.stop("auth")
    try:
        with client(cluster) as c:
            r = c.post("/api/login", json={"username": "someone", "password": "whatever1"})
    finally:
        cluster.start("auth")
    assert r.status_code == 503
    assert isinstance(r.json()["detail"], str)
    assert httpx.codes.is_error(r.status_code)
