"""What `make demo` measured, as typed records from the scenarios to the report, demo.json and the tests.

A scenario about one mode's traffic extends `Traffic`, so the JSON keeps one flat record per mode.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from scaleout.lab.load import Latency


class ScenarioResult(Protocol):
    duration_s: float


Timeline = list[tuple[float, float]]  # (seconds since the fault, success rate in that bin)


@dataclass
class Traffic:
    """Simulated users' requests through nginx in one mode."""

    mode: str
    success_rate: float
    requests_per_replica: dict[str, int]
    status_by_replica: dict[str, dict[str, int]]
    latency_ms: Latency
    latencies_ms: list[float]


@dataclass
class StickyResult(Traffic):
    users_per_replica: dict[str, int] = field(default_factory=dict)
    request_imbalance: float = 0.0
    user_imbalance: float = 0.0
    killed: str = ""
    pinned_users: list[int] = field(default_factory=list)
    lost_users: list[int] = field(default_factory=list)
    sessions_lost: int = 0
    failed_5xx: int = 0
    unaffected_success_rate: float = 0.0
    relogin_ok: bool = False
    recovery_s: float = 0.0
    timeline: Timeline = field(default_factory=list)


@dataclass
class IpHashResult(Traffic):
    one_nat_users_per_replica: dict[str, int] = field(default_factory=dict)
    many_networks_users_per_replica: dict[str, int] = field(default_factory=dict)


@dataclass
class StickyScenario:
    sticky: StickyResult
    ip_hash: IpHashResult
    duration_s: float = 0.0


@dataclass(frozen=True)
class Outage:
    seconds: float
    requests: int
    status_503: int
    status_200: int
    other: int


@dataclass
class ClusteringResult(Traffic):
    redis_down: Outage = field(default_factory=lambda: Outage(0, 0, 0, 0, 0))
    healed: bool = False
    recovery_s: float = 0.0
    timeline: Timeline = field(default_factory=list)
    fault_window: tuple[float, float] = (0.0, 0.0)
    duration_s: float = 0.0


@dataclass
class JwtResult(Traffic):
    success_rate_with_redis_and_auth_down: float = 0.0
    token_bytes: int = 0
    session_cookie_bytes: int = 0
    timeline: Timeline = field(default_factory=list)
    fault_window: tuple[float, float] = (0.0, 0.0)
    duration_s: float = 0.0


@dataclass
class FailoverResult(Traffic):
    """REDIS_TOPOLOGY=sentinel: the primary SIGKILLed while users loop on every replica."""

    killed: str = ""
    new_primary: str = ""
    recovery_s: float = 0.0  # from the kill to the last failed request
    during: dict[str, int] = field(default_factory=dict)  # statuses of requests between kill and recovery
    sessions_lost: int = 0  # acknowledged logins that no longer work after the failover
    logins_during: dict[str, int] = field(default_factory=dict)  # statuses of logins attempted meanwhile
    timeline: Timeline = field(default_factory=list)
    fault_window: tuple[float, float] = (0.0, 0.0)
    duration_s: float = 0.0


@dataclass
class WallResult(Traffic):
    duration_s: float = 0.0


@dataclass(frozen=True)
class DeviceRevocation:
    """A user ends their other device's session while that device keeps sending requests."""

    revoke_status: int
    accepted_after_revoke: int
    seconds_to_refuse: float | None  # None: still accepted when the measurement ended
    still_valid_for_s: float | None  # jwt without a denylist: until `exp`


@dataclass(frozen=True)
class RevocationMode:
    logout_status: int
    replays: int
    accepted_after_logout: int
    accepted_by_replica: dict[str, int]
    window_s: float
    other_device: DeviceRevocation
    me_p50_ms: float | None = None


@dataclass
class RevocationResult:
    modes: dict[str, RevocationMode]
    denylist_cost_ms: float
    duration_s: float = 0.0


@dataclass(frozen=True)
class Switch:
    from_mode: str
    to_mode: str
    reload_s: float
    requests_around_reload: int
    failed: int
    before: dict[str, int]
    after: dict[str, int]


@dataclass
class LiveSwitchResult:
    switches: list[Switch]
    requests: int
    failed: int
    failures: dict[str, int]
    keepalive_retries: int
    duration_s: float = 0.0


@dataclass
class DemoResults:
    stateful_wall: WallResult | None = None
    sticky: StickyScenario | None = None
    clustering: ClusteringResult | None = None
    jwt: JwtResult | None = None
    revocation: RevocationResult | None = None
    live_switch: LiveSwitchResult | None = None
    store_failover: FailoverResult | None = None

    def traffic(self) -> list[Traffic]:
        """Every mode's steady traffic, in the table's order."""
        found: list[Traffic] = []
        if self.stateful_wall:
            found.append(self.stateful_wall)
        if self.sticky:
            found += [self.sticky.sticky, self.sticky.ip_hash]
        if self.clustering:
            found.append(self.clustering)
        if self.jwt:
            found.append(self.jwt)
        if self.store_failover:
            found.append(self.store_failover)
        return found

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}
