"""Credentials for schemathesis' CLI run by `test_openapi_contract.py` (named by SCHEMATHESIS_HOOKS).

One shared login for reads; a fresh login of another user for each write that ends one (logout-all ends
every login of its user), so the fuzzer never logs itself out halfway. The cluster's URL, the mode and the
two users come from the environment the test sets.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import schemathesis

ENDS_A_LOGIN = {
    ("POST", "/api/logout"),
    ("POST", "/api/logout-all"),
    ("DELETE", "/api/sessions/{session_id}"),
    ("DELETE", "/api/me"),
}
URL = os.environ["CONTRACT_URL"]
JWT = os.environ["CONTRACT_MODE"] == "jwt"
PASSWORD = os.environ["CONTRACT_PASSWORD"]
READER, WRITER = os.environ["CONTRACT_USERS"].split(",")


def login(username: str) -> dict[str, str]:
    with httpx.Client(base_url=URL, timeout=10.0) as c:
        r = c.post("/api/login", json={"username": username, "password": PASSWORD})
        r.raise_for_status()
        if JWT:
            return {"Authorization": f"Bearer {r.json()['access_token']}"}
        return {"sid": c.cookies["sid"], "csrf_token": c.cookies["csrf_token"]}


SHARED = login(READER)


@schemathesis.auth(refresh_interval=None)
class Credentials:
    def get(self, case: Any, ctx: Any) -> dict[str, str]:
        return login(WRITER) if (case.method.upper(), case.path) in ENDS_A_LOGIN else SHARED

    def set(self, case: Any, data: dict[str, str], ctx: Any) -> None:
        case.headers = dict(case.headers or {})
        if JWT:
            case.headers.update(data)
            return
        case.cookies = {**(case.cookies or {}), "sid": data["sid"], "csrf_token": data["csrf_token"]}
        case.headers["X-CSRF-Token"] = data["csrf_token"]
