"""Run one service in the foreground, on the core alone (no lab dependencies).

    python -m services.serve auth|api     the auth service, or the replica named by REPLICA_ID
    python -m services.serve secrets      create the cluster's secrets in SECRETS_DIR (compose runs this once)

The local runner and compose both launch exactly these commands, with settings from the environment.
"""

from __future__ import annotations

import sys

from pydantic import ValidationError

from scaleout.core.config import COOKIE_MODE_WARNING, AuthMode, explain, get_settings

USAGE = "usage: python -m services.serve auth|api|secrets"


def serve(kind: str) -> None:
    import uvicorn

    settings = get_settings()
    port = settings.auth_port if kind == "auth" else settings.api_port(settings.replica_id)
    uvicorn.run(
        f"services.{kind}.main:app",
        host=settings.bind_host or settings.host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=2,
        # Longer than nginx's upstream keepalive_timeout: the side that closes idle connections must be
        # nginx, or it races the replica's close and retries a request on another replica.
        timeout_keep_alive=75,
        server_header=False,
        # The replicas read nginx's X-Real-IP themselves; uvicorn's proxy-header rewriting is not needed.
        proxy_headers=False,
    )


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("auth", "api", "secrets"):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        settings = get_settings()
    except ValidationError as exc:
        print(f"error: {explain(exc)}", file=sys.stderr)
        return 2
    if argv[0] != "secrets":
        if refusal := settings.cookie_mode_refusal():
            print(f"error: {refusal}", file=sys.stderr)
            return 2
        if settings.auth_mode is AuthMode.cookie:
            print(COOKIE_MODE_WARNING, file=sys.stderr, flush=True)  # into the service's own log, at start
    if argv[0] == "secrets":
        from scaleout.core.keys import KeyUnusable
        from scaleout.core.secretfiles import distribute, write_cluster_secrets

        settings = get_settings()
        try:
            write_cluster_secrets(settings)
        except KeyUnusable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"secrets ready in {settings.secrets_path}")
        # Compose: each kind of container gets its own volume with only the files it needs.
        if settings.secrets_out is not None:
            print(f"handed to: {', '.join(distribute(settings, settings.secrets_out)) or 'nobody'}")
        return 0
    serve(argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
