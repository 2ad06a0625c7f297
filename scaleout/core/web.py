"""What every service shares on the HTTP side: error shapes, identity headers, health and metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from enum import StrEnum
from functools import lru_cache
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from scaleout.core.nearcache import NearCacheStats
from scaleout.core.store import StoreUnavailable

REQUESTS = Counter("scaleout_requests_total", "HTTP requests served", ["service", "path", "status"])
AUTH_FAILURES = Counter("scaleout_auth_failures_total", "Refused credentials by reason", ["reason"])
STORE_LATENCY = Histogram(
    "scaleout_session_store_seconds",
    "Latency of session and revocation store calls",
    ["store", "op"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
)


class JSONResponse(Response):
    """orjson-rendered JSON (FastAPI deprecated its own JSONResponse)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class IdentityMiddleware:
    """Pure ASGI (no per-request Request objects): adds identity headers and counts responses.

    Paths outside `known_paths` share one metrics label, so a scan of random URLs cannot blow up the
    number of time series.
    """

    def __init__(
        self, app: ASGIApp, service: str, headers: Iterable[tuple[str, str]], known_paths: Iterable[str]
    ) -> None:
        self.app = app
        self.service = service
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers]
        self.known = set(known_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in self.known else "other"

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
                REQUESTS.labels(self.service, path, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, send_wrapper)


def create_app(
    service: str,
    lifespan: Callable[[FastAPI], Any] | None = None,
    ready: Callable[[], Awaitable[bool]] | None = None,
) -> FastAPI:
    app = FastAPI(
        title=f"scaleout {service}",
        default_response_class=JSONResponse,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # FastAPI's OpenTelemetry bridge asks the OTel API (environment lookups) on every request whether a
        # provider is configured; the services export Prometheus metrics, not OTel, so it is switched off.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the input back (passwords included); say where, not what.
        fields = sorted({".".join(str(p) for p in e.get("loc", ())[1:]) or "body" for e in exc.errors()})
        return error(422, "invalid request: " + ", ".join(fields))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request.app, request.url.path))
        return error(exc.status_code, str(exc.detail), headers)

    @app.exception_handler(StoreUnavailable)
    async def _store_down(request: Request, exc: StoreUnavailable) -> JSONResponse:
        return error(503, str(exc), {"Retry-After": "1", "Cache-Control": "no-store"})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Alive: the process answers (a liveness probe, which must not depend on anything else)."""
        return {"status": "ok", "service": service}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready: what this service needs to serve answers too (a readiness probe: traffic waits, the process
        is not restarted)."""
        if ready is not None and not await ready():
            return error(503, "a dependency does not answer", {"Retry-After": "1", "Cache-Control": "no-store"})
        return JSONResponse({"status": "ready", "service": service})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def add_identity(app: FastAPI, service: str, headers: dict[str, str]) -> None:
    """Call once all routes exist: their paths become the metrics labels."""
    known = [route.path for route in app.routes if hasattr(route, "path")]
    app.add_middleware(IdentityMiddleware, service=service, headers=headers.items(), known_paths=known)


def settle_heap() -> None:
    """Call once start-up is done: keeps the garbage collector's full passes short under load.

    Everything built at start-up (the app, routes, pydantic models, keys) lives forever; freezing it takes
    it out of the generations the collector scans, which otherwise stalls every request in flight for
    tens of milliseconds (visible as p99 in `make bench`).
    """
    import gc

    gc.collect()
    gc.freeze()


class _NearCacheCollector:
    """The near-cache's counters, read when `/metrics` is scraped (nothing is counted twice per request).
    Registered once per process; the replica built last is the one it reports (one per process in a
    cluster, several in an in-process test)."""

    def __init__(self) -> None:
        self.stats: NearCacheStats | None = None
        self.size: Callable[[], int] = lambda: 0

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        if stats is None:
            return
        for name, value, doc in (
            ("hits", stats.hits, "Session and denylist answers served from the replica's near-cache"),
            ("misses", stats.misses, "Answers the near-cache could not give (asked Redis)"),
            ("invalidations", stats.invalidations, "Keys Redis said changed (CLIENT TRACKING invalidate)"),
            ("flushes", stats.flushes, "Times the whole near-cache was dropped (connection lost, failover)"),
        ):
            yield CounterMetricFamily(f"scaleout_near_cache_{name}", doc, value=value)
        yield GaugeMetricFamily("scaleout_near_cache_entries", "Entries in the near-cache now", value=self.size())


_NEAR_CACHE = _NearCacheCollector()
REGISTRY.register(_NEAR_CACHE)


def register_near_cache_metrics(stats: NearCacheStats, size: Callable[[], int]) -> None:
    _NEAR_CACHE.stats, _NEAR_CACHE.size = stats, size


@lru_cache(maxsize=64)
def store_timer(store: str, op: str) -> Any:
    # Looked up once per (store, op), not on every request: labels() takes a lock and hashes its values.
    return STORE_LATENCY.labels(store, op)


async def timed(store: str, op: str, call: Awaitable[Any]) -> Any:
    start = time.perf_counter()
    try:
        return await call
    finally:
        store_timer(store, op).observe(time.perf_counter() - start)


class Access(StrEnum):
    """What a route needs of its caller (declared by the service's endpoints, read back by `install_docs`)."""

    reader = "reader"  # a credential
    writer = "writer"  # a credential, and the CSRF header when that credential is a cookie


def allowed_methods(app: Starlette, path: str) -> list[str]:
    """Every method some route serves at `path`: a 405 must name them all (RFC 9110, 15.5.6), while
    Starlette names only those of the first route whose path matched."""
    methods: set[str] = set()
    for route in app.routes:
        if isinstance(route, Route) and route.methods and route.path_regex.match(path):
            methods |= route.methods
    return sorted(methods)


class ErrorDetail(BaseModel):
    """Every error: a 4xx (or 503) with one human-readable sentence."""

    detail: str


def _add_model(models: dict[str, Any], model: type[BaseModel]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    models.update(schema.pop("$defs", {}))
    models[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def install_docs(
    app: FastAPI,
    documented: Mapping[tuple[str, str], type[BaseModel]],
    access: Mapping[tuple[str, str], Access],
    cookie: str = "sid",
) -> None:
    """`GET /api/openapi.json` and `GET /api/docs` (Swagger UI served from the installed package, no CDN).

    `documented` names the plain Starlette routes (kept off FastAPI's per-request machinery for speed) and
    their response models, so the document describes every endpoint all the same; `access` says which
    operations need a credential (METHOD, path template), from which their `security` is written.
    """
    needs = {(method.lower(), path): kind for (method, path), kind in access.items()}
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.openapi.utils import get_openapi
    from starlette.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    cached: dict[str, Any] = {}

    def document() -> dict[str, Any]:
        if cached:
            return cached
        schema = get_openapi(title=app.title, version="1", routes=app.routes)
        # Served through nginx, which routes /api/ only: the services' own /healthz and /metrics stay out.
        for own in ("/healthz", "/readyz", "/metrics"):
            schema["paths"].pop(own, None)
        components = schema.setdefault("components", {})
        models = components.setdefault("schemas", {})
        error = _add_model(models, ErrorDetail)
        for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's, but our 422s say `detail` in words
            models.pop(name, None)
        for (method, path), model in documented.items():
            models[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schema["paths"].setdefault(path, {})[method.lower()] = {
                "summary": path.rsplit("/", 1)[-1],
                "operationId": f"{method.lower()}_{path.strip('/').replace('/', '_')}",
                "responses": {
                    "200": {
                        "description": "Successful Response",
                        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
                    }
                },
            }
        components["securitySchemes"] = {
            "sessionCookie": {"type": "apiKey", "in": "cookie", "name": cookie},
            "csrfHeader": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"},
            "bearerToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
        }
        for path, operations in schema["paths"].items():
            for method, operation in operations.items():
                responses = operation["responses"]
                if "requestBody" in operation or operation.get("parameters"):
                    responses.setdefault("422", {"description": "Invalid request"})
                if "requestBody" in operation:
                    responses.setdefault("400", {"description": "A body that is not JSON, or not for this mode"})
                    responses.setdefault("413", {"description": "Request body too large (nginx refuses it)"})
                # What nginx or a dependency may answer for any operation, before or instead of the endpoint.
                responses.setdefault("431", {"description": "Request headers too large (nginx refuses them)"})
                responses.setdefault("503", {"description": "No replica, session store or auth service available"})
                for code, response in responses.items():
                    if code[0] in "45":
                        response["content"] = {"application/json": {"schema": error}}
                        response.setdefault("description", "Error")
                        if not response["description"]:
                            response["description"] = "Error"
                kind = needs.get((method, path))
                if kind is Access.reader:
                    operation["security"] = [{"sessionCookie": []}, {"bearerToken": []}]
                elif kind is Access.writer:
                    operation["security"] = [{"sessionCookie": [], "csrfHeader": []}, {"bearerToken": []}]
                if kind is not None:
                    operation["responses"].setdefault("401", {"description": "Not authenticated"})
        cached.update(schema)
        return cached

    async def openapi(request: Request) -> Response:
        return JSONResponse(document())

    async def docs(request: Request) -> Response:
        return get_swagger_ui_html(
            openapi_url="/api/openapi.json",
            title=f"{app.title} API",
            swagger_js_url="/api/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/api/docs/static/swagger-ui.css",
            swagger_favicon_url="/api/docs/static/favicon-32x32.png",
        )

    app.add_route("/api/openapi.json", openapi, methods=["GET"], include_in_schema=False)
    app.add_route("/api/docs", docs, methods=["GET"], include_in_schema=False)
    app.mount("/api/docs/static", StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")
