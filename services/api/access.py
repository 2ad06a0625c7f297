"""Which route needs which credential, declared once, in the endpoints' own signatures.

An endpoint that takes a `Caller` needs a credential; one that takes a `Writer` changes state, so a
cookie-authenticated request must also pass the CSRF check. `access_table` reads those declarations back
from the app's routes, and everything else is derived from it: the routes the `Authenticate` middleware
resolves ahead of the endpoint (the fast path), and the OpenAPI document's `security`. A plain Starlette
route (kept off FastAPI's per-request machinery for speed) declares its access where it is added,
through `add_plain_route`, so it is declared once too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.responses import Response

from scaleout.core.authn import Principal
from scaleout.core.web import Access
from services.api.replica import Replica

AUTH_OUTCOME = "scaleout.auth"  # where `Authenticate` leaves what it found, in the request's scope


class CSRFRefused(Exception):
    """A cookie-authenticated write without the right `X-CSRF-Token` (answered 403)."""


def replica_of(request: Request) -> Replica:
    replica: Replica = request.app.state.replica
    return replica


async def caller(request: Request) -> Principal:
    """The caller, as `Authenticate` found it (raising what it caught), or checked here on a route the
    middleware does not cover (a path with parameters)."""
    outcome = request.scope.get(AUTH_OUTCOME)
    if outcome is None:
        return await replica_of(request).authn.authenticate(request.scope["headers"])
    if isinstance(outcome, Exception):
        raise outcome
    assert isinstance(outcome, Principal)
    return outcome


async def writer(request: Request, principal: Annotated[Principal, Depends(caller)]) -> Principal:
    """The caller of a state-changing request; a cookie without its CSRF header is refused (403)."""
    if not replica_of(request).authn.allows_write(request.scope["headers"], principal):
        raise CSRFRefused
    return principal


Caller = Annotated[Principal, Depends(caller)]
Writer = Annotated[Principal, Depends(writer)]
ReplicaDep = Annotated[Replica, Depends(replica_of)]


def add_plain_route(
    app: FastAPI, path: str, endpoint: Callable[[Request], Awaitable[Response]], access: Access | None = None
) -> None:
    """A GET route without FastAPI's dependency solving (the hot read path), with its access declared here."""
    app.add_route(path, endpoint, methods=["GET"])
    if access is not None:
        if not hasattr(app.state, "plain_access"):
            app.state.plain_access = {}
        app.state.plain_access[("GET", path)] = access


def _needs(dependant: Dependant) -> Access | None:
    calls = {d.call for d in dependant.dependencies}
    if writer in calls:
        return Access.writer
    if caller in calls:
        return Access.reader
    found = [a for d in dependant.dependencies if (a := _needs(d)) is not None]
    return Access.writer if Access.writer in found else (found[0] if found else None)


def access_table(app: FastAPI) -> dict[tuple[str, str], Access]:
    """(METHOD, path template) -> what it needs, for every route that needs a credential (HEAD with GET)."""
    table: dict[tuple[str, str], Access] = dict(getattr(app.state, "plain_access", {}))
    for route in app.routes:
        if isinstance(route, APIRoute) and (needs := _needs(route.dependant)) is not None:
            for method in route.methods or ():
                table[(method, route.path)] = needs
    for method, path in list(table):
        if method == "GET":
            table[("HEAD", path)] = table[(method, path)]
    return table


def fast_path(app: FastAPI) -> frozenset[tuple[str, str]]:
    """The routes `Authenticate` resolves ahead of the endpoint: those of the table whose path is literal
    (a path with parameters needs the router's matching, so its dependency checks for itself)."""
    return frozenset(key for key in access_table(app) if "{" not in key[1])
