"""authx 1 (a maintained FastAPI JWT library), as its documentation's quick start sets it up, with RS256
to match our `jwt RS256` mode: `AuthX(config)`, tokens in the `Authorization` header, a protected route
depending on `access_token_required`.

Run by `make bench` as `uvicorn scaleout.lab.bench.peers.authx_app:app`; the key pair is made at start-up.
"""

from __future__ import annotations

from authx import AuthX, AuthXConfig
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import Depends, FastAPI

_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
config = AuthXConfig(
    JWT_ALGORITHM="RS256",
    JWT_PRIVATE_KEY=_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode(),
    JWT_PUBLIC_KEY=_key.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode(),
    JWT_TOKEN_LOCATION=["headers"],
)
auth: AuthX[dict[str, object]] = AuthX(config=config)
app = FastAPI()
auth.handle_errors(app)


@app.post("/login")
async def login(body: dict[str, str]) -> dict[str, str]:
    return {"access_token": auth.create_access_token(uid=body["username"])}


@app.get("/unauthenticated-route")
async def unauthenticated_route() -> dict[str, str]:
    return {"message": "Hello!"}


@app.get("/authenticated-route", dependencies=[Depends(auth.access_token_required)])
async def authenticated_route() -> dict[str, str]:
    return {"message": "Hello!"}
