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
    user_agent: Annotated[str, StringConstraints(max_length=256)] = ""


class RefreshRequest(_Body):
    refresh_token: Annotated[str, Field(min_length=1, max_length=8192)]


ClientIp = Annotated[str, StringConstraints(max_length=64)]


class RegisterRequest(Credentials):
    """What a replica sends the auth service to register: the credentials plus the client address."""

    client_ip: ClientIp = "unknown"


class AuthRefreshRequest(RefreshRequest):
    client_ip: ClientIp = "unknown"


class PasswordConfirmation(_Body):
    password: LoginPassword


class DeleteAccountRequest(PasswordConfirmation):
    uid: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    username: LoginName
    client_ip: ClientIp = "unknown"


class LogoutAll(_Body):
    keep_current: bool = False


# Response models: for the OpenAPI document (the endpoints render their JSON themselves).
class WhoAmI(BaseModel):
    replica: str
    auth_mode: str
    session_store: str
    session_cache: str  # "tracking": this replica answers from its near-cache while Redis keeps it in step


class Me(WhoAmI):
    username: str


class Registered(BaseModel):
    username: str


class TokenPair(BaseModel):
    auth_mode: str
    access_token: str | None = None
    token_type: str | None = None
    refresh_token: str | None = None
    expires_in: int
    replica: str


class SessionEntry(BaseModel):
    """`sessions.SessionInfo` as the document describes it."""

    id: str
    created: int
    last_seen: int
    current: bool
    user_agent: str
    ip: str


class SessionList(BaseModel):
    sessions: list[SessionEntry]
