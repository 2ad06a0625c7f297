"""The replica's endpoints, as routers over its dependencies. Which credential each needs is in its
signature (`Caller`, `Writer`: see `access.py`); refusals are raised and answered in one place each
(`NotAuthenticated` 401, `CSRFRefused` 403, `StoreUnavailable` 503), never built here."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Request
from fastapi.responses import Response

from scaleout.core.authn import NO_STORE, CookieAuthenticator, LoginGrant, forget_cookies, forget_stage_cookies
from scaleout.core.config import AuthMode
from scaleout.core.schemas import (
    Credentials,
    LoginCredentials,
    LogoutAll,
    PasswordConfirmation,
    RefreshRequest,
    Registered,
    SessionList,
    TokenPair,
)
from scaleout.core.sessions import HANDLE
from scaleout.core.web import JSONResponse, error
from services.api.access import Caller, ReplicaDep, Writer
from services.api.replica import client_ip, relay_error, user_agent

accounts = APIRouter(prefix="/api")
tokens = APIRouter(prefix="/api")  # jwt mode only: in the other modes these paths do not exist (404)


@accounts.post("/register", status_code=201, response_model=Registered, responses={409: {}, 422: {}, 429: {}})
async def register(body: Credentials, request: Request, replica: ReplicaDep) -> Response:
    """Create an account (Argon2id hash on the auth service)."""
    upstream = await replica.post_auth("/register", {**body.model_dump(), "client_ip": client_ip(request)})
    if upstream.status_code != 201:
        return relay_error(upstream)
    return JSONResponse({"username": upstream.json()["username"]}, status_code=201)


@accounts.post("/login", response_model=TokenPair, responses={401: {}, 429: {}})
async def login(body: LoginCredentials, request: Request, replica: ReplicaDep) -> Response:
    """Session mode: sets the `sid` and `csrf_token` cookies. JWT mode: an access and a refresh token."""
    upstream = await replica.post_auth(
        "/login", {**body.model_dump(), "client_ip": client_ip(request), "user_agent": user_agent(request)}
    )
    if upstream.status_code != 200:
        return relay_error(upstream)
    data = upstream.json()
    if replica.settings.auth_mode is AuthMode.cookie:
        data["password"] = body.password  # the naive cookie carries it: that is the lesson
    grant = LoginGrant(data.pop("uid"), data.pop("username"), data)
    response = await replica.authn.login(request.scope["headers"], grant, replica.name)
    if not isinstance(replica.authn, CookieAuthenticator):
        forget_stage_cookies(request.scope["headers"], response)
    return response


@accounts.post("/logout", status_code=204, responses={401: {}, 403: {}})
async def logout(principal: Writer, request: Request, replica: ReplicaDep) -> Response:
    """Ends this login: the session everywhere (session mode), the refresh family (jwt mode)."""
    response = await replica.authn.logout(principal, replica.call_auth)
    if not isinstance(replica.authn, CookieAuthenticator):
        forget_stage_cookies(request.scope["headers"], response)
    return response


@accounts.get("/sessions", response_model=SessionList, responses={401: {}})
async def sessions(principal: Caller, replica: ReplicaDep) -> Response:
    """The caller's sessions (jwt mode: its refresh families, one per login). Memory store: this replica's."""
    listed = await replica.authn.sessions(principal)
    return JSONResponse({"sessions": [s.as_json() for s in listed]}, headers=NO_STORE)


@accounts.delete("/sessions/{session_id}", status_code=204, responses={401: {}, 403: {}, 404: {}})
async def end_session(
    session_id: Annotated[str, Path(max_length=64)], principal: Writer, replica: ReplicaDep
) -> Response:
    """End one of the caller's sessions, on every replica (memory store: on this one)."""
    if not HANDLE.fullmatch(session_id) or not await replica.authn.end(principal, session_id):
        return error(404, "no such session", NO_STORE)
    response = Response(status_code=204, headers=NO_STORE)
    if session_id == principal.handle:
        forget_cookies(replica.authn, response)
    return response


@accounts.post("/logout-all", status_code=204, responses={401: {}, 403: {}})
async def logout_all(
    principal: Writer, replica: ReplicaDep, body: Annotated[LogoutAll | None, Body()] = None
) -> Response:
    """End every session of the caller, or every other one with `keep_current`."""
    keep = body.keep_current if body is not None else False
    await replica.authn.end_all(principal, keep_current=keep)
    response = Response(status_code=204, headers=NO_STORE)
    if not keep:
        forget_cookies(replica.authn, response)
    return response


@accounts.delete("/me", status_code=204, responses={401: {}, 403: {}, 429: {}})
async def delete_me(body: PasswordConfirmation, request: Request, principal: Writer, replica: ReplicaDep) -> Response:
    """Delete the caller's account (password required) and end all its sessions and refresh families."""
    refused = await replica.call_auth(
        "/delete-account",
        {
            "uid": principal.uid,
            "username": principal.username,
            "password": body.password,
            "client_ip": client_ip(request),
        },
        {},
    )
    if refused is not None:
        if refused.status_code == 401:  # the caller is who they say; only the password was wrong
            return error(403, "wrong password", NO_STORE)
        return refused
    await replica.authn.end_all(principal, keep_current=False)
    response = Response(status_code=204, headers=NO_STORE)
    forget_cookies(replica.authn, response)
    return response


@tokens.post("/refresh", response_model=TokenPair, responses={401: {}, 429: {}})
async def refresh(body: RefreshRequest, request: Request, replica: ReplicaDep) -> Response:
    """A new token pair for a refresh token, which is spent (single use)."""
    upstream = await replica.post_auth("/refresh", {**body.model_dump(), "client_ip": client_ip(request)})
    if upstream.status_code != 200:
        return relay_error(upstream)
    data = upstream.json()
    data.pop("uid", None)
    data.pop("username", None)
    return JSONResponse({**data, "replica": replica.name}, headers=NO_STORE)
