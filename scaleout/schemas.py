"""Request bodies, validated by pydantic: anything else is a 422 before any handler runs."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Username = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_.-]{3,32}$")]
Password = Annotated[str, StringConstraints(min_length=8, max_length=128)]
# Login takes any short string as a name: a malformed name is an unknown user (401), not a hint (422).
LoginName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
LoginPassword = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)


class Credentials(_Body):
    username: Username
    password: Password


class LoginCredentials(_Body):
    username: LoginName
    password: LoginPassword


class LoginRequest(LoginCredentials):
    """What a replica sends the auth service: the credentials plus the client address nginx saw."""

    client_ip: Annotated[str, StringConstraints(max_length=64)] = "unknown"


class RefreshRequest(_Body):
    refresh_token: Annotated[str, Field(min_length=1, max_length=8192)]
