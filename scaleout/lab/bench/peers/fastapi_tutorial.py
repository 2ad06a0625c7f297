"""FastAPI's security tutorial ("OAuth2 with Password, Bearer with JWT tokens"), with python-jose and RS256:
`OAuth2PasswordBearer` and `jwt.decode` with the key as a PEM string on every request.

Run by `make bench` as `uvicorn scaleout.lab.bench.peers.fastapi_tutorial:app`; the public key's file is
named by PEER_PUBLIC_KEY_FILE.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import OAuth2PasswordBearer
from jose import JWTError, jwt

PUBLIC_KEY = Path(os.environ.get("PEER_PUBLIC_KEY_FILE", "/dev/null")).read_text()
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="token")
app = FastAPI()


async def get_current_user(token: Annotated[str, Depends(oauth2_scheme)]) -> str:
    try:
        payload = jwt.decode(token, PUBLIC_KEY, algorithms=["RS256"], audience="scaleout-api")
    except JWTError as exc:
        raise HTTPException(status_code=401, detail="Could not validate credentials") from exc
    return str(payload["name"])


@app.get("/api/whoami")
async def whoami() -> dict[str, str]:
    return {"replica": "tutorial"}


@app.get("/api/me")
async def me(user: Annotated[str, Depends(get_current_user)]) -> dict[str, str]:
    return {"username": user}
