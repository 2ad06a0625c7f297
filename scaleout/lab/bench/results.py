"""What `make bench` measured, as typed records from the measurement to the report, the JSON and the tests."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from scaleout.lab.bench.pairing import Ratio
from scaleout.lab.bench.wrk import WrkRun


@dataclass(frozen=True, slots=True)
class BenchSettings:
    seconds: float
    pairs: int
    clusters: int
    users: int
    wrk: str = "-t1 -c32"


@dataclass(frozen=True, slots=True)
class ModeResult:
    mode: str
    baseline: WrkRun  # GET /api/whoami, no auth
    me: WrkRun  # GET /api/me, authenticated
    ratio: Ratio  # me ÷ baseline, per pair
    auth_check_us: float  # the replica's CPU per /api/me beyond the baseline request


@dataclass(frozen=True, slots=True)
class PeerResult:
    """A peer app against our replica, both direct (no nginx), under the same uvicorn and wrk settings."""

    peer: str
    against: str  # our mode it is compared with
    peer_rps: float  # its authenticated route
    peer_unauthenticated_rps: float  # its own route without authentication
    ours_rps: float  # our replica's /api/me, direct
    ours_over_peer: Ratio
    errors: int


@dataclass(frozen=True, slots=True)
class LoginCost:
    logins_per_s_sequential: float
    p50_ms: float
    argon2: dict[str, int]


@dataclass(frozen=True, slots=True)
class MicroCosts:
    """In-process costs of single operations, in µs (median of many)."""

    session_mac_seal_us: float
    session_mac_open_us: float
    memory_login_below_capacity_us: float
    memory_login_at_capacity_us: float


@dataclass(frozen=True, slots=True)
class Capacity:
    mode: str
    api_us: float
    nginx_us: float
    redis_us: float
    replica_rps: float
    redis_core_rps: float | None  # None: nothing shared on the read path
    replicas_per_redis_core: float | None


@dataclass(frozen=True, slots=True)
class RedisDrive:
    processes: int
    batch: int
    ops_per_s: float
    redis_cpu_share: float  # of one core, during the drive
    ops_per_redis_core_s: float


@dataclass(frozen=True, slots=True)
class WaitCost:
    """What confirming a session write on a replica (`WAIT 1`) adds to a login's store write."""

    put_ms_without_wait: float
    put_ms_with_wait: float


@dataclass(frozen=True, slots=True)
class PersistenceCost:
    """What REDIS_PERSISTENCE=aof (appendfsync everysec) adds to a login's session write, in one run."""

    put_ms_none: float
    put_ms_aof: float
    redis_cpu_us_none: float  # Redis CPU per session write
    redis_cpu_us_aof: float


@dataclass(frozen=True, slots=True)
class TrackingCost:
    """What `SESSION_CACHE=tracking` costs Redis beyond reads (`scaleout.lab.bench.tracking`): `replicas`
    tracking connections have each read `keys` keys; "read" writes hit those keys, "unread" ones new keys."""

    keys: int
    replicas: int
    table_bytes_per_key_default: float  # Redis memory per key read by every replica (tracking table)
    table_bytes_per_key_bcast: float
    invalidations_per_write_read_default: float  # keys invalidated, summed over the replicas
    invalidations_per_write_unread_default: float
    invalidations_per_write_read_bcast: float
    invalidations_per_write_unread_bcast: float
    write_cpu_us_untracked: float  # Redis CPU per SET with nobody tracking
    write_cpu_us_read_default: float
    write_cpu_us_read_bcast: float
    write_cpu_us_unread_bcast: float
    login_cpu_us: float  # the product's session write, per login
    renewal_cpu_us: float  # one pipelined GETEX, with the replicas holding the session
    invalidations_per_renewal: float  # summed over the replicas: a renewal is a write to the key
    revocation_cpu_us: float  # a logout: the session and its index entry


@dataclass(frozen=True, slots=True)
class ShardCost:
    """One shard of the Redis Cluster topology, measured through the product's own store."""

    shard: int
    primary: str
    sessions: int  # of the sessions written, those in this shard's slots
    kib_per_10k_sessions: float  # its primary's memory per 10,000 of them
    login_cpu_us: float  # its primary's CPU per login stored there (session, index, WAIT)
    read_cpu_us: float  # per session read (`GET`, pipelined as the replicas send it)
    drive_ops_per_s: float  # the replicas' read pattern alone, all shards driven at once
    drive_cpu_share: float  # of one core, meanwhile
    drive_ops_per_core_s: float


@dataclass(frozen=True, slots=True)
class ShardProjection:
    sessions: int
    replicas: int
    shards_for_memory: int
    shards_for_cpu: int
    shards: int  # the larger: each also needs its Redis replica (as much memory again, on another machine)


@dataclass(frozen=True, slots=True)
class ClusterSizing:
    """The sizing rule of the cluster topology: shards needed for S sessions and R API replicas."""

    shards: list[ShardCost]
    reads_per_login: int  # the request mix the rule is stated for
    read_us: float  # Redis CPU per authenticated request, from the wrk runs (summed over the primaries)
    login_us: float  # Redis CPU per login (mean over the shards)
    replica_rps: float  # one API replica's authenticated requests per second on one core
    bytes_per_session: float  # mean over the shards
    shard_memory_gib: float  # the memory budget of one primary
    shard_core_share: float  # the CPU budget of one primary (of its one core)
    projections: list[ShardProjection]


@dataclass
class BenchResults:
    settings: BenchSettings
    topology: str = "single"
    modes: list[ModeResult] = field(default_factory=list)
    control: Ratio | None = None  # the baseline against itself: the noise
    control_mode: str = ""
    peers: list[PeerResult] = field(default_factory=list)
    login: LoginCost | None = None
    signing_ms: dict[str, float] = field(default_factory=dict)
    micro: MicroCosts | None = None
    capacity: list[Capacity] = field(default_factory=list)
    redis_drive: RedisDrive | None = None
    wait_cost: WaitCost | None = None
    persistence: PersistenceCost | None = None
    tracking: TrackingCost | None = None
    cluster: ClusterSizing | None = None

    def mode(self, name: str) -> ModeResult:
        return next(m for m in self.modes if m.mode == name)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
