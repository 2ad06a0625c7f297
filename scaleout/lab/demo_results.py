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
    persistence: str = ""  # REDIS_PERSISTENCE of the cluster measured
    sessions_lost_on_restart: int = 0  # users refused (401) once Redis was back: they had to log in again
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
class CookieOnlyResult(Traffic):
    """AUTH_MODE=cookie: the identity in the cookie, no server state."""

    forged_accepted: bool = False  # `user=bob` set by hand, and accepted
    replays_after_logout: int = 0
    accepted_after_logout: int = 0
    password_in_cookie: bool = False  # the captured cookie is the password
    browser_kept: dict[str, bool] = field(default_factory=dict)  # cookie size in bytes -> kept by Chromium
    browser: str = ""  # which browser measured it, or why none did
    duration_s: float = 0.0


@dataclass(frozen=True)
class GrowthPoint:
    """One cluster size: what session clustering costs there."""

    servers: int
    logins: int
    messages_per_login: float  # replicated: to the other replicas
    bytes_per_login: float
    fanout_ms: float  # replicated: until every peer acknowledged (mean)
    replica_cpu_ms_per_login_replicated: float
    replica_cpu_ms_per_login_memory: float  # the same logins without replication, for comparison


@dataclass
class FaultPhase:
    """Users looping on /api/me while one fault sat between the replicas and Redis, and after it cleared."""

    fault: str  # as `make fault` says it: "latency 50ms", "blackhole", ...
    requests: int
    statuses: dict[str, int]
    p50_ms: float  # of every answer, whatever its status
    p99_ms: float
    max_ms: float
    recovery_s: float  # from `clear` until every later request got 200


@dataclass
class SlowStoreResult:
    """A slow, silent or resetting store (`make fault TARGET=redis`): what every request got, and how fast."""

    budget_ms: float  # REDIS_TIMEOUT: a store read's budget
    phases: list[FaultPhase]
    duration_s: float = 0.0


@dataclass
class OverloadStep:
    """One open-loop run: requests offered at a fixed rate, whatever the answers."""

    times_capacity: float
    offered_per_s: float
    admitted_per_s: float
    admitted_p50_ms: float
    admitted_p99_ms: float
    slowest_ms: float
    shed_share: float  # 503s among all answers
    other_errors: int  # anything but 200 and 503: timeouts, resets, other statuses
    generator_lag_p99_ms: float = 0.0  # how late the generator sent (the admitted latencies count from sending)


@dataclass
class CPUBoundOverload:
    """The same, where the replicas' CPU is the bottleneck: capped together to a fraction of a core."""

    mode: str
    cpus: float
    capacity_per_s: float  # measured by wrk, closed loop, one connection per in-flight slot
    steps: list[OverloadStep]
    rss_growth_kib: int  # the most any replica grew over the steps
    recovery_s: float | None  # until one user's requests in turn were all 200 for a second; None: not in 5 s


@dataclass
class OverloadResult:
    """More requests than the replicas can hold: the excess shed at once, the admitted still quick."""

    capacity_per_s: float  # replicas x inflight_per_replica / the store's added latency
    inflight_per_replica: int  # REPLICA_MAX_INFLIGHT of the cluster measured
    store_ms: float  # what the fault proxy added to every store read
    steps: list[OverloadStep]
    recovery_all_200: bool  # at half the capacity right after, every request served
    cpu_bound: list[CPUBoundOverload] = field(default_factory=list)
    cpu_inflight_per_replica: int = 0
    duration_s: float = 0.0


@dataclass
class GrowthResult:
    """Replication against a shared Redis against JWT, as the number of servers grows."""

    points: list[GrowthPoint]
    session_kib_per_10k_in_memory: float  # one replica's memory for 10,000 sessions
    session_kib_per_10k_in_redis: float  # Redis's memory for 10,000 sessions (with their index)
    redis_messages_per_login: int  # one write (and a WAIT in the sentinel topology), whatever N
    session_kib_per_10k_in_near_cache: float = 0.0  # SESSION_CACHE=tracking: one replica's cache of 10,000
    duration_s: float = 0.0

    def projection(self, servers: int, sessions: int = 1_000_000) -> dict[str, float]:
        """Per login and in memory, at `servers` servers, from the measured constants."""
        last = self.points[-1]
        per_message = last.bytes_per_login / max(1.0, last.messages_per_login)
        mem = self.session_kib_per_10k_in_memory * sessions / 10_000 / 1024  # MiB per replica
        return {
            "replicated_messages_per_login": servers - 1,
            "replicated_bytes_per_login": (servers - 1) * per_message,
            "replicated_memory_mib_total": servers * mem,
            "redis_messages_per_login": self.redis_messages_per_login,
            "redis_memory_mib_total": self.session_kib_per_10k_in_redis * sessions / 10_000 / 1024,
            "jwt_messages_per_login": 0,
        }


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
    # SESSION_CACHE=tracking: sessions ended in Redis while every replica's near-cache held them, and the ms
    # from the write's acknowledgement until every replica refused (p50, p90, p99, p100).
    near_cache_revocations: int = 0
    near_cache_window_ms: dict[str, float] = field(default_factory=dict)
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
    target: str = "local"  # or "compose"
    stateful_wall: WallResult | None = None
    sticky: StickyScenario | None = None
    clustering: ClusteringResult | None = None
    near_cache: ClusteringResult | None = None  # the same, with SESSION_CACHE=tracking
    jwt: JwtResult | None = None
    revocation: RevocationResult | None = None
    live_switch: LiveSwitchResult | None = None
    store_failover: FailoverResult | None = None
    cookie_only: CookieOnlyResult | None = None
    replication_growth: GrowthResult | None = None
    slow_store: SlowStoreResult | None = None
    overload: OverloadResult | None = None

    def traffic(self) -> list[Traffic]:
        """Every mode's steady traffic, in the table's order."""
        found: list[Traffic] = []
        if self.cookie_only:
            found.append(self.cookie_only)
        if self.stateful_wall:
            found.append(self.stateful_wall)
        if self.sticky:
            found += [self.sticky.sticky, self.sticky.ip_hash]
        if self.clustering:
            found.append(self.clustering)
        if self.near_cache:
            found.append(self.near_cache)
        if self.jwt:
            found.append(self.jwt)
        if self.store_failover:
            found.append(self.store_failover)
        return found

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}
