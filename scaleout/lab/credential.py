"""What a simulated user carries on every request, whoever simulates it (the demo's and the bench's users,
the panel's traffic): a bearer token in jwt mode, else the cookies its client keeps, with the CSRF header
that a cookie-authenticated write needs."""

from __future__ import annotations

from dataclasses import dataclass

import httpx


@dataclass
class Credential:
    cookies: httpx.Cookies  # the client's own jar: the session cookie lives there
    token: str | None = None

    def took(self, login: httpx.Response) -> None:
        """After a login: keep the access token (jwt mode); session mode's cookies went into the jar."""
        if login.status_code == 200:
            self.token = login.json().get("access_token") or None

    def headers(self, write: bool = False) -> dict[str, str]:
        """For one request; a cookie write also carries the CSRF token (double submit)."""
        if self.token:
            return {"Authorization": f"Bearer {self.token}"}
        return {"X-CSRF-Token": self.cookies.get("csrf_token") or ""} if write else {}

    def header(self) -> tuple[str, str]:
        """The credential as one header line (name, value): what a thief would replay."""
        if self.token:
            return "Authorization", f"Bearer {self.token}"
        return "Cookie", "; ".join(f"{c.name}={c.value}" for c in self.cookies.jar)
