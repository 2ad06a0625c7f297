"""What every place the cluster runs offers the lab: one interface, one implementation per place.

The CLI, the demo, the bench, the panel and the tests hold a `ClusterDriver` and nothing more specific:
local processes (`drivers/local.py`) and a compose stack (`drivers/compose.py`) today. A scenario a driver
cannot run is declared by the driver (`cannot_run`), never discovered by an AttributeError.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from scaleout.core.config import LBMode, Settings
from scaleout.lab.faults import Fault

if TYPE_CHECKING:
    from scaleout.lab.topology import Shard  # it reports its errors as ClusterError, from here

Say = Callable[[str], None]


class ClusterError(Exception):
    """A verb the cluster refuses, in words for the user (the CLI prints it as one line)."""


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    service: str
    pid: int | None  # a process locally; a container's main process in a stack
    address: str
    healthy: bool
    state: str = ""  # what the runtime says beyond healthy or not ("exited", "restarting", ...)


class ClusterDriver(Protocol):
    """One cluster, wherever it runs. Verbs act on the cluster as it runs (its settings are read back from
    it, not from the caller's environment), except `up`, which brings it to `settings`."""

    settings: Settings

    @property
    def public_url(self) -> str:
        """nginx, where users reach the cluster."""
        ...

    def up(self, progress: Say = ...) -> None:
        """Start, or bring a running cluster to `settings`; returns once every service is healthy and nginx
        reaches every replica."""
        ...

    def down(self) -> list[str]:
        """Stop and remove what `up` started, and nothing else; returns what was stopped."""
        ...

    def status(self) -> list[ServiceStatus]: ...

    def lb(self, mode: LBMode) -> None:
        """Switch nginx's balancing live (config test, graceful reload)."""
        ...

    def stop(self, service: str, kill: bool = False) -> str:
        """Fault injection. `redis` in the Sentinel topology names the primary of the moment; returns the
        service stopped."""
        ...

    def start(self, service: str) -> str:
        """Start a stopped service again (`redis`: a stopped one); returns the service started."""
        ...

    def primary(self) -> str | None:
        """The Redis that is primary now (Sentinel topology: as the Sentinels say)."""
        ...

    def shards(self) -> list[Shard]:
        """Redis Cluster topology: each shard's slots, primary and replica now; empty otherwise."""
        ...

    def replica_cpu_seconds(self) -> float:
        """CPU time the API replicas have used so far, all together."""
        ...

    def logs(self, service: str, lines: int = 50) -> str: ...

    def fault(self, target: str, kind: str, value: str | None = None) -> Fault:
        """Switch the fault between the services and `target` (redis, auth); returns it once the fault proxy
        applies it. FaultError: a wrong fault; ClusterError: no proxy to switch."""
        ...

    def faults(self) -> dict[str, Fault]:
        """The fault in effect on each proxy that runs."""
        ...

    def cannot_run(self, scenario: str) -> str | None:
        """Why this driver cannot run a demo scenario, or None when it can."""
        ...
