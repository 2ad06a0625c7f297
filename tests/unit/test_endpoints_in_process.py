"""Every branch of register, login, me, logout, refresh and the session controls, per mode, in process.

The replica and the auth service are built by their factories in this test process and talk through httpx's
ASGI transport; only Redis is real (a redis-server of the test session). Fast feedback beside the cluster
tests, which show the same behaviour through nginx on every replica.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from scaleout.core.config import Settings
from services.api.main import create_api_app
from services.auth.main import create_auth_app

pytestmark = pytest.mark.anyio
PASSWORD = "correct horse battery"

MODES = {
    "session/memory": {"auth_mode": "session", "session_store": "memory"},
    "session/redis": {"auth_mode": "session", "session_store": "redis"},
    "jwt/RS256": {"auth_mode": "jwt", "jwt_alg": "RS256"},
    "jwt/HS256+denylist": {"auth_mode": "jwt", "jwt_alg": "HS256", "jwt_revocation": "denylist"},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Replica:
    """One replica app in process, in front of an in-process auth service."""

    settings: Settings
    http: httpx.AsyncClient

    @property
    def jwt(self) -> bool:
        return self.settings.auth_mode == "jwt"

    async def user(self, name: str | None = None) -> tuple[str, dict[str, str]]:
        """Register and log in; returns the name and the headers that authenticate a write."""
        name = name or "u" + secrets.token_hex(5)
        assert (await self.http.post("/api/register", json={"username": name, "password": PASSWORD})).status_code == 201
        r = await self.http.post("/api/login", json={"username": name, "password": PASSWORD})
        assert r.status_code == 200, r.text
        if self.jwt:
            return name, {"Authorization": f"Bearer {r.json()['access_token']}"}
        return name, {"X-CSRF-Token": r.cookies["csrf_token"]}


@pytest.fixture(params=list(MODES))
async def replica(request: pytest.FixtureRequest, tmp_path: Path, redis_url: str) -> AsyncIterator[Replica]:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir(mode=0o700)
    (secrets_dir / "session_key").write_text(secrets.token_urlsafe(48))
    (secrets_dir / "jwt_secret").write_text(secrets.token_urlsafe(32))
    settings = Settings.model_validate(
        {
            **MODES[request.param],
            "cluster_dir": tmp_path,
            "redis_url": redis_url,
            "auth_url": "http://auth",
            "throttle_ip_max": 10_000,
            "throttle_account_max": 3,
        }
    )
    auth = create_auth_app(settings)
    api = create_api_app(settings, auth_transport=httpx.ASGITransport(app=auth, raise_app_exceptions=False))
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(auth.router.lifespan_context(auth))
        await stack.enter_async_context(api.router.lifespan_context(api))
        http = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api")
        )
        yield Replica(settings, http)


async def test_register_validates_and_refuses_a_taken_name(replica: Replica) -> None:
    name, _ = await replica.user()
    r = await replica.http.post("/api/register", json={"username": name, "password": PASSWORD})
    assert r.status_code == 409
    for body in ({"username": "A!", "password": PASSWORD}, {"username": "okname", "password": "short"}, {}):
        r = await replica.http.post("/api/register", json=body)
        assert r.status_code == 422 and PASSWORD not in r.text
    assert (await replica.http.post("/api/register", content=b"{oops")).status_code == 422


async def test_login_answers_per_mode_and_refuses_alike(replica: Replica) -> None:
    name, _ = await replica.user()
    r = await replica.http.post("/api/login", json={"username": name, "password": PASSWORD})
    body = r.json()
    assert body["auth_mode"] == replica.settings.auth_mode and body["replica"] == "api-1"
    if replica.jwt:
        assert body["token_type"] == "bearer" and body["access_token"] and body["refresh_token"]
        assert "set-cookie" not in r.headers
    else:
        cookies = r.headers.get_list("set-cookie")
        assert any(c.startswith("sid=") and "HttpOnly" in c and "SameSite=Lax" in c for c in cookies)
        assert any(c.startswith("csrf_token=") and "HttpOnly" not in c for c in cookies)
        assert "sid" not in body
    wrong = await replica.http.post("/api/login", json={"username": name, "password": "not the password"})
    unknown = await replica.http.post(
        "/api/login", json={"username": "nobody" + secrets.token_hex(4), "password": "whatever1"}
    )
    assert wrong.status_code == unknown.status_code == 401 and wrong.json() == unknown.json()
    for _ in range(3):
        await replica.http.post("/api/login", json={"username": name, "password": "not the password"})
    throttled = await replica.http.post("/api/login", json={"username": name, "password": PASSWORD})
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1


async def test_me_needs_a_valid_credential(replica: Replica) -> None:
    name, headers = await replica.user()
    me = await replica.http.get("/api/me", headers={k: v for k, v in headers.items() if k == "Authorization"})
    assert me.status_code == 200 and me.json()["username"] == name
    assert me.headers["cache-control"] == "no-store" and me.headers["x-replica"] == "api-1"
    replica.http.cookies.clear()
    missing = await replica.http.get("/api/me")
    assert missing.status_code == 401 and missing.headers["www-authenticate"]
    junk = {"Authorization": "Bearer a.b.c"} if replica.jwt else {"Cookie": "sid=../../etc/passwd"}
    assert (await replica.http.get("/api/me", headers=junk)).status_code == 401
    two = [("Authorization", "Bearer a.b.c"), ("Authorization", "Bearer d.e.f")]
    if not replica.jwt:
        two = [("Cookie", "sid=" + "A" * 43), ("Cookie", "sid=" + "B" * 43)]
    assert (await replica.http.get("/api/me", headers=two)).status_code == 401


async def test_logout_ends_the_login_and_needs_csrf_with_cookies(replica: Replica) -> None:
    _, headers = await replica.user()
    if not replica.jwt:
        assert (await replica.http.post("/api/logout")).status_code == 403
        assert (await replica.http.post("/api/logout", headers={"X-CSRF-Token": "x" * 43})).status_code == 403
    r = await replica.http.post("/api/logout", headers=headers)
    assert r.status_code == 204
    after = await replica.http.get("/api/me", headers=headers)
    revokes = not replica.jwt or replica.settings.jwt_revocation == "denylist"
    assert after.status_code == (401 if revokes else 200)


async def test_refresh_is_single_use_and_jwt_only(replica: Replica) -> None:
    name = "u" + secrets.token_hex(5)
    await replica.http.post("/api/register", json={"username": name, "password": PASSWORD})
    login = (await replica.http.post("/api/login", json={"username": name, "password": PASSWORD})).json()
    if not replica.jwt:  # the endpoint does not exist in this mode, and its document does not list it
        assert (await replica.http.post("/api/refresh", json={"refresh_token": "x"})).status_code == 404
        assert "/api/refresh" not in (await replica.http.get("/api/openapi.json")).json()["paths"]
        return
    first = await replica.http.post("/api/refresh", json={"refresh_token": login["refresh_token"]})
    assert first.status_code == 200 and first.json()["access_token"] != login["access_token"]
    again = await replica.http.post("/api/refresh", json={"refresh_token": login["refresh_token"]})
    assert again.status_code == 401  # reuse: the whole family is revoked
    newer = await replica.http.post("/api/refresh", json={"refresh_token": first.json()["refresh_token"]})
    assert newer.status_code == 401
    assert (await replica.http.post("/api/refresh", json={"refresh_token": login["access_token"]})).status_code == 401
    assert (await replica.http.post("/api/refresh", json={})).status_code == 422


async def test_sessions_are_listed_ended_and_the_account_deleted(replica: Replica) -> None:
    name, headers = await replica.user()
    listed = (await replica.http.get("/api/sessions", headers=headers)).json()["sessions"]
    assert len(listed) == 1 and listed[0]["current"]
    assert (await replica.http.delete("/api/sessions/" + "A" * 16, headers=headers)).status_code == 404
    assert (await replica.http.post("/api/logout-all", headers=headers, json={"keep_current": True})).status_code == 204
    assert (await replica.http.get("/api/me", headers=headers)).status_code == 200
    wrong = await replica.http.request("DELETE", "/api/me", headers=headers, json={"password": "nope nope"})
    assert wrong.status_code == 403
    gone = await replica.http.request("DELETE", "/api/me", headers=headers, json={"password": PASSWORD})
    assert gone.status_code == 204
    relogin = await replica.http.post("/api/login", json={"username": name, "password": PASSWORD})
    assert relogin.status_code == 401


async def test_the_openapi_document_describes_every_endpoint(replica: Replica) -> None:
    doc = (await replica.http.get("/api/openapi.json")).json()
    paths = doc["paths"]
    expected = {
        ("get", "/api/whoami"),
        ("get", "/api/me"),
        ("delete", "/api/me"),
        ("post", "/api/register"),
        ("post", "/api/login"),
        ("post", "/api/logout"),
        ("get", "/api/sessions"),
        ("delete", "/api/sessions/{session_id}"),
        ("post", "/api/logout-all"),
    } | ({("post", "/api/refresh")} if replica.jwt else set())
    assert {(m, p) for p, ops in paths.items() for m in ops} == expected
    schemes = doc["components"]["securitySchemes"]
    assert set(schemes) == {"sessionCookie", "csrfHeader", "bearerToken"}
    # `security` as the endpoints declare it: reads want a credential, writes the CSRF header with a cookie.
    writes = {("post", "/api/logout"), ("delete", "/api/sessions/{session_id}"), ("post", "/api/logout-all")}
    for method, path in expected:
        security = paths[path][method].get("security")
        if (method, path) in writes | {("delete", "/api/me")}:
            assert security == [{"sessionCookie": [], "csrfHeader": []}, {"bearerToken": []}], (method, path)
        elif (method, path) in {("get", "/api/me"), ("get", "/api/sessions")}:
            assert security == [{"sessionCookie": []}, {"bearerToken": []}], (method, path)
        else:
            assert security is None, (method, path)
    assert "Me" in doc["components"]["schemas"] and "Credentials" in doc["components"]["schemas"]
    page = await replica.http.get("/api/docs")
    assert page.status_code == 200 and "/api/docs/static/swagger-ui-bundle.js" in page.text
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    js = await replica.http.get("/api/docs/static/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000


async def test_a_405_names_every_method_the_path_serves(replica: Replica) -> None:
    """RFC 9110: a 405's Allow lists all the resource's methods (not only those of the first route matched:
    `/api/me` is a plain GET route beside FastAPI's DELETE)."""
    paths = (await replica.http.get("/api/openapi.json")).json()["paths"]
    for path, operations in paths.items():
        concrete = path.replace("{session_id}", "A" * 16)
        r = await replica.http.request("OPTIONS", concrete)
        assert r.status_code == 405, (path, r.status_code)
        allowed = {m.strip() for m in r.headers["allow"].split(",")}
        assert allowed >= {m.upper() for m in operations}, (path, allowed)
        assert r.json() == {"detail": "Method Not Allowed"}
    me = await replica.http.request("PUT", "/api/me")
    assert {m.strip() for m in me.headers["allow"].split(",")} == {"DELETE", "GET", "HEAD"}
