"""Two cookie-session peers of `session/redis`, each as its own documentation sets it up:

- starsessions 2 (the Starlette/FastAPI session library) with its `RedisStore`: the session in Redis, its
  ID in the cookie; `SessionMiddleware` outermost, then `SessionAutoloadMiddleware`, as its README orders
  them. The direct peer of our session clustering.
- Starlette's own `SessionMiddleware`: the session itself in a signed cookie (itsdangerous), nothing stored
  on the server. The stateless peer.

Run by `make bench` as `uvicorn scaleout.lab.bench.peers.cookie_sessions:app` with PEER_KIND=starsessions
(and PEER_REDIS_URL) or PEER_KIND=starlette.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, HTTPException, Request

SECRET = os.environ.get("PEER_SECRET", "bench-only-secret-not-for-production-0123456789")
KIND = os.environ.get("PEER_KIND", "starlette")

app = FastAPI()
if KIND == "starsessions":
    from starsessions import SessionAutoloadMiddleware, SessionMiddleware
    from starsessions.stores.redis import RedisStore

    # add_middleware puts each new one outside the last: SessionMiddleware ends up outermost.
    app.add_middleware(SessionAutoloadMiddleware)
    app.add_middleware(
        SessionMiddleware, store=RedisStore(os.environ["PEER_REDIS_URL"]), lifetime=3600, cookie_https_only=False
    )
else:
    from starlette.middleware.sessions import SessionMiddleware as SignedCookieSessions

    app.add_middleware(SignedCookieSessions, secret_key=SECRET, max_age=3600, https_only=False)


@app.post("/login")
async def login(request: Request) -> dict[str, str]:
    body = await request.json()
    request.session["user"] = str(body["username"])
    return {"user": request.session["user"]}


@app.get("/unauthenticated-route")
async def unauthenticated_route() -> dict[str, str]:
    return {"message": "Hello!"}


@app.get("/authenticated-route")
async def authenticated_route(request: Request) -> dict[str, str]:
    user = request.session.get("user")
    if user is None:
        raise HTTPException(status_code=401, detail="not authenticated")
    return {"message": f"Hello {user}!"}
