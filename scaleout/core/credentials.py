"""Reading credentials from the raw ASGI headers, strictly.

Starlette's cookie parser keeps the last of duplicate cookies and forgives odd bytes; a credential that is
ambiguous must be refused instead, so these helpers look at the raw header list.
"""

from __future__ import annotations

from collections.abc import Iterable


class Ambiguous(Exception):
    """The same credential came twice (two `sid` cookies, two Authorization headers)."""


class Malformed(Exception):
    """The credential is not even of the right shape, so no store is asked about it."""


def single_cookie(headers: Iterable[tuple[bytes, bytes]], name: str) -> str | None:
    raw = single_cookie_raw(headers, name.encode())
    return None if raw is None else raw.decode("latin-1")


def single_cookie_raw(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """`single_cookie` without building a list or decoding: the session check runs it on every request.

    Names are compared after the trimming every common parser does (`sid =x` is a `sid` cookie to them), so
    a second spelling of the name is a second cookie, and two are ambiguous, never "the first one wins".
    """
    found: bytes | None = None
    for key, value in headers:
        if key == b"cookie":
            for part in value.split(b";"):
                k, sep, v = part.partition(b"=")
                if sep and k.strip(b" \t") == name:
                    if found is not None:
                        raise Ambiguous(name.decode())
                    found = v.strip(b" \t")
    return found


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The token of a single `Authorization: Bearer` header; None when there is none or it is another scheme."""
    found: bytes | None = None
    for key, value in headers:
        if key == b"authorization":
            if found is not None:
                raise Ambiguous("authorization")
            found = value
    if found is None:
        return None
    scheme, _, token = found.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return token.strip().decode("latin-1") or None


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for k, v in headers:
        if k == name:
            return v.decode("latin-1")
    return None
