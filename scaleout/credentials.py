"""Reading credentials from the raw ASGI headers, strictly.

Starlette's cookie parser keeps the last of duplicate cookies and forgives odd bytes; a credential that is
ambiguous must be refused instead, so these helpers look at the raw header list.
"""

from __future__ import annotations

from collections.abc import Iterable


class Ambiguous(Exception):
    """The same credential came twice (two `sid` cookies, two Authorization headers)."""


def cookie_values(headers: Iterable[tuple[bytes, bytes]], name: str) -> list[str]:
    wanted = name.encode()
    found: list[str] = []
    for key, value in headers:
        if key != b"cookie":
            continue
        for part in value.split(b";"):
            k, sep, v = part.strip().partition(b"=")
            if sep and k == wanted:
                found.append(v.decode("latin-1"))
    return found


def single_cookie(headers: Iterable[tuple[bytes, bytes]], name: str) -> str | None:
    values = cookie_values(headers, name)
    if len(values) > 1:
        raise Ambiguous(name)
    return values[0] if values else None


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The token of a single `Authorization: Bearer` header; None when there is none or it is another scheme."""
    values = [v for k, v in headers if k == b"authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise Ambiguous("authorization")
    scheme, _, token = values[0].decode("latin-1").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for k, v in headers:
        if k == name:
            return v.decode("latin-1")
    return None
