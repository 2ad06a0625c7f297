"""The one source of truth for ports, modes and settings.

The local runner, the services, the nginx renderer and docker-compose all read these names: a service
gets its settings from environment variables of the same (upper-case) name.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class AuthMode(StrEnum):
    session = "session"
    jwt = "jwt"
    cookie = "cookie"  # the story's first stage: the identity in a cookie, in the clear (a lab mode, unsafe)


class SessionStore(StrEnum):
    memory = "memory"
    redis = "redis"
    replicated = "replicated"  # every replica holds every session, sent to it by the others


class LBMode(StrEnum):
    round_robin = "round_robin"
    sticky = "sticky"
    ip_hash = "ip_hash"


class JWTRevocation(StrEnum):
    none = "none"
    denylist = "denylist"


class RedisTopology(StrEnum):
    single = "single"
    sentinel = "sentinel"
    cluster = "cluster"


class SessionCache(StrEnum):
    off = "off"
    tracking = "tracking"  # each replica keeps what it read from Redis until Redis says it changed


class RedisPersistence(StrEnum):
    none = "none"
    aof = "aof"


class JWTAlg(StrEnum):
    RS256 = "RS256"
    ES256 = "ES256"
    HS256 = "HS256"


ROOT = Path(__file__).resolve().parents[2]
COOKIE_MODE_WARNING = (
    "WARNING: AUTH_MODE=cookie is unsafe on purpose: the browser carries the username and the password in "
    "the clear, anyone can edit the `user` cookie, and logout cannot revoke anything. A lab mode, bound to "
    "loopback; never do this on a real site."
)
MIN_HS256_SECRET_BYTES = 32


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    # Modes (CONTRACT.md, "Modes").
    auth_mode: AuthMode = AuthMode.session
    session_store: SessionStore = SessionStore.redis
    lb_mode: LBMode = LBMode.round_robin
    jwt_revocation: JWTRevocation = JWTRevocation.none
    jwt_alg: JWTAlg = JWTAlg.RS256
    replicas: int = Field(default=3, ge=1, le=9)
    redis_topology: RedisTopology = RedisTopology.single
    # aof: sessions, logouts and the denylist survive a full stop and start (appendfsync everysec: a crash
    # loses at most the last second); none: a restart forgets them all (a revoked token is valid again).
    redis_persistence: RedisPersistence = RedisPersistence.aof
    # tracking: sessions and denylist answers read from Redis are kept in each replica's memory and
    # invalidated by Redis (CLIENT TRACKING); served only while the connection they came on is known alive.
    session_cache: SessionCache = SessionCache.off
    session_cache_max_entries: int = Field(default=100_000, ge=1)
    # How long the invalidation stream may stay silent before the cache is not trusted: the longest a
    # revocation can go unseen when that stream is cut without a reset.
    session_cache_staleness: float = Field(default=0.05, gt=0, le=5)

    # Addresses. Locally everything binds to loopback; compose overrides the hosts with service names.
    host: str = "127.0.0.1"
    bind_host: str = ""  # where services listen; defaults to `host` (compose sets 0.0.0.0)
    nginx_port: int = 8080
    auth_port: int = 9000
    api_port_base: int = 8000  # replica api-N listens on api_port_base + N
    # Every replica on this one port instead (Kubernetes: one pod template for all of them; 0: off).
    replica_port: int = Field(default=0, ge=0, le=65535)
    # sentinel topology: redis-1; redis-2 and redis-3 take the next two ports. cluster topology: the three
    # shards' first primaries, then their replicas, on this port and the five after it.
    redis_port: int = 6380
    sentinel_port: int = 26380  # sentinel-1; sentinel-2 and sentinel-3 take the next two ports
    sentinel_master: str = "scaleout"
    sentinel_down_after_ms: int = Field(default=1000, ge=100)
    sentinel_failover_timeout_ms: int = Field(default=3000, ge=500)
    # What the user was told survives a failover: a write is acknowledged only once this many replicas
    # have it (`WAIT`), or it fails with 503. Sentinel topology only (a single Redis has no replica).
    redis_wait_replicas: int = Field(default=1, ge=0, le=2)
    redis_wait_ms: int = Field(default=500, ge=1)
    lab_port: int = 8090  # the control panel (`make lab`), loopback only
    # The lab's fault proxies (`make fault`): the local services reach Redis and the replicas reach the auth
    # service through them, so latency, a blackhole or resets can be switched on while the cluster runs.
    fault_proxy: bool = True
    redis_proxy_port: int = 6390
    auth_proxy_port: int = 9001
    auth_url: str = ""  # derived from host/auth_port when empty
    redis_url: str = ""  # derived from host/redis_port when empty
    sentinel_addresses: str = ""  # "host:port,host:port,..."; derived from host/sentinel_port when empty
    # Redis Cluster: nodes the services first ask for the slot map ("host:port,..."); the local ports when empty.
    cluster_addresses: str = ""
    # How long a shard's primary may stay silent before its replica is promoted (cluster-node-timeout).
    cluster_node_timeout_ms: int = Field(default=1000, ge=100)
    # The nodes' cluster bus (node to node), one port each from here; 0: each node's port + 10000 (Redis's).
    cluster_bus_port: int = Field(default=0, ge=0, le=65535)

    # Identity of one replica process.
    replica_id: str = "api-1"
    # The machine it runs on, when that is worth saying (a Swarm node: the `X-Node` response header).
    node_name: str = Field(default="", max_length=64, pattern=r"^[A-Za-z0-9._-]*$")
    # SESSION_STORE=replicated: replicas reach each other by name (compose) or on `host` (local).
    peers_by_name: bool = False
    replication_timeout: float = Field(default=0.5, gt=0)

    # Runtime state.
    cluster_dir: Path = ROOT / ".cluster"
    users_db: Path | None = None  # default: cluster_dir/users.sqlite3
    keys_dir: Path | None = None  # default: cluster_dir/keys
    secrets_dir: Path | None = None  # default: cluster_dir/secrets (0700; each file 0600)
    # Compose's secrets generator: also hand each kind of container its own files, under <dir>/<role>.
    secrets_out: Path | None = None
    # HS256 only: base64url of at least 32 random bytes. Locally it lives in secrets_dir/jwt_secret; the
    # variable is for deployments that hand it over themselves (compose).
    jwt_secret: str = Field(default="", repr=False, exclude=True)
    redis_username: str = "scaleout"  # what the services use: the commands they send and no others
    redis_admin_username: str = "scaleout-admin"  # replication, the Sentinels and the operator (the lab)

    # Token and session lifetimes, in seconds.
    access_ttl: int = Field(default=300, ge=1)
    refresh_ttl: int = Field(default=86400, ge=1)
    refresh_absolute_ttl: int = Field(default=7 * 86400, ge=1)  # a login's refresh family, however refreshed
    max_sessions_per_user: int = Field(default=10, ge=1, le=1000)
    jwks_refresh_interval: float = Field(default=5.0, gt=0)  # replicas refetch the JWKS this often
    jwt_leeway: int = Field(default=0, ge=0, le=60)
    jwt_issuer: str = "scaleout-auth"
    jwt_audience: str = "scaleout-api"
    jwt_max_bytes: int = 4096
    session_idle_ttl: int = Field(default=1800, ge=1)
    session_absolute_ttl: int = Field(default=28800, ge=1)
    cookie_secure: bool = False
    # AUTH_MODE=cookie runs only when this is true: the local runner sets it for its loopback-bound services;
    # anywhere else (compose, a service started by hand) someone must say it on purpose.
    allow_unsafe_cookie_mode: bool = False

    # Login throttling (shared through Redis): failures per window before 429.
    throttle_window: int = Field(default=60, ge=1)
    throttle_account_max: int = Field(default=5, ge=1)
    throttle_ip_max: int = Field(default=50, ge=1)

    # nginx's request-rate limits per client address (a flood is refused before Python). Login's burst
    # stays within what the auth service hashes in a few seconds (argon2_concurrency at a time).
    login_rate: int = Field(default=200, ge=1)
    login_burst: int = Field(default=100, ge=0)
    register_rate_per_minute: int = Field(default=30, ge=1)
    register_burst: int = Field(default=40, ge=0)
    refresh_rate: int = Field(default=20, ge=1)
    refresh_burst: int = Field(default=100, ge=0)
    # Connections one client address may hold open at nginx (load tests use 64 from one address).
    conn_per_ip: int = Field(default=512, ge=1)
    # Requests nginx lets each replica work on at once (`max_conns`, shared by nginx's workers through the
    # upstream zone). Beyond it the excess is shed at once, 503 with Retry-After, rather than queued inside a
    # replica where every request would wait longer and time out.
    replica_max_inflight: int = Field(default=128, ge=1, le=10_000)
    # Slow clients (one header byte a second) are cut off after this many seconds.
    client_timeout: int = Field(default=10, ge=1)

    # Argon2id, at least OWASP's minimum (m=19 MiB, t=2, p=1).
    argon2_time_cost: int = Field(default=2, ge=2)
    argon2_memory_kib: int = Field(default=19456, ge=19456)
    argon2_parallelism: int = Field(default=1, ge=1)
    # Password hashes computed at once by the auth service; more wait up to argon2_queue_wait, then 503.
    argon2_concurrency: int = Field(default=4, ge=1)
    argon2_queue_wait: float = Field(default=5.0, gt=0)

    # The replicas' budget for one call to the auth service (login, logout, refresh): a login may wait
    # argon2_queue_wait for a hashing slot, then hashes; beyond it the caller gets 503, never a hang.
    auth_timeout: float = Field(default=6.0, gt=0)
    # Redis client timeouts: a store that is down must answer 503 quickly, not hang the request.
    redis_timeout: float = 0.5

    @field_validator("replica_id")
    @classmethod
    def _replica_id_shape(cls, v: str) -> str:
        if not v.startswith("api-") or not v[4:].isdigit():
            raise ValueError("REPLICA_ID must look like api-N")
        return v

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.session_absolute_ttl < self.session_idle_ttl:
            raise ValueError("SESSION_ABSOLUTE_TTL must be at least SESSION_IDLE_TTL")
        return self

    # Derived values: computed, never stored twice.
    @property
    def auth_base_url(self) -> str:
        return self.auth_url or f"http://{self.host}:{self.auth_port}"

    @property
    def redis_dsn(self) -> str:
        return self.redis_url or f"redis://{self.host}:{self.redis_port}/0"

    @property
    def sentinel(self) -> bool:
        return self.redis_topology == RedisTopology.sentinel  # also when set by model_copy, as a str

    @property
    def cluster(self) -> bool:
        return self.redis_topology == RedisTopology.cluster

    @property
    def redis_ports(self) -> list[int]:
        """redis-1 (the first primary), then the others (sentinel: its replicas; cluster: the other primaries,
        then one replica each)."""
        return [self.redis_port + i for i in range(6 if self.cluster else 3 if self.sentinel else 1)]

    @property
    def cluster_bus_ports(self) -> list[int]:
        base = self.cluster_bus_port or self.redis_port + 10000
        return [base + i for i in range(len(self.redis_ports))] if self.cluster else []

    @property
    def cluster_hosts(self) -> list[tuple[str, int]]:
        """Where the services first ask for the slot map: CLUSTER_ADDRESSES, or the local ports."""
        return _addresses(self.cluster_addresses) or [(self.host, p) for p in self.redis_ports]

    @property
    def sentinel_ports(self) -> list[int]:
        return [self.sentinel_port + i for i in range(3)] if self.sentinel else []

    @property
    def sentinel_hosts(self) -> list[tuple[str, int]]:
        """Where clients find the Sentinels: SENTINEL_HOSTS ("host:port,...") or the local ports."""
        return _addresses(self.sentinel_addresses) or [(self.host, p) for p in self.sentinel_ports]

    @property
    def users_db_path(self) -> Path:
        return self.users_db or self.secrets_path / "users.sqlite3"

    @property
    def keys_path(self) -> Path:
        return self.keys_dir or self.secrets_path / "keys"

    @property
    def secrets_path(self) -> Path:
        return self.secrets_dir or self.cluster_dir / "secrets"

    def secret(self, name: str) -> str:
        """A secret from its owner-only file (written by the runner, or mounted by compose); '' if absent."""
        try:
            return (self.secrets_path / name).read_text().strip()
        except OSError:
            return ""

    def redis_password(self) -> str | None:
        return self.secret("redis_password") or None

    def redis_admin_password(self) -> str | None:
        """The administrative user's: only the Redis servers, the Sentinels and the operator hold it."""
        return self.secret("redis_admin_password") or None

    def hs256_secret(self) -> str:
        return self.jwt_secret or self.secret("jwt_secret")

    @property
    def replica_names(self) -> list[str]:
        return [f"api-{n}" for n in range(1, self.replicas + 1)]

    def api_port(self, replica: str) -> int:
        return self.replica_port or self.api_port_base + int(replica.removeprefix("api-"))

    def replica_url(self, replica: str) -> str:
        host = replica if self.peers_by_name else self.host
        return f"http://{host}:{self.api_port(replica)}"

    @property
    def public_url(self) -> str:
        return f"http://{self.host}:{self.nginx_port}"

    def cookie_mode_refusal(self) -> str | None:
        """Why a service must not start in AUTH_MODE=cookie here, or None (another mode, or allowed)."""
        if self.auth_mode is not AuthMode.cookie or self.allow_unsafe_cookie_mode:
            return None
        return (
            "AUTH_MODE=cookie is refused: it hands the password to the browser in the clear. It is the story's "
            "first stage for a lab on loopback (`make up AUTH_MODE=cookie`); to run it anyway, set "
            "ALLOW_UNSAFE_COOKIE_MODE=true"
        )

    @property
    def cookie_name(self) -> str:
        # The __Host- prefix makes browsers refuse the cookie unless Secure, Path=/ and no Domain.
        return "__Host-sid" if self.cookie_secure else "sid"


@lru_cache
def get_settings() -> Settings:
    return Settings()


def _allowed(field: str) -> str:
    """What a setting accepts, in words: its choices, or its range."""
    info = Settings.model_fields[field]
    kind = info.annotation
    if isinstance(kind, type) and issubclass(kind, StrEnum):
        return "one of " + ", ".join(m.value for m in kind)
    bounds = [(k, v) for m in info.metadata for k in ("ge", "gt", "le", "lt") if (v := getattr(m, k, None)) is not None]
    limits = dict(bounds)
    if kind is int and "ge" in limits and "le" in limits:
        return f"a whole number from {limits['ge']} to {limits['le']}"
    nouns: dict[object, str] = {int: "a whole number", float: "a number", bool: "true or false"}
    noun = nouns.get(kind, "a text")
    words = {"ge": "at least", "gt": "above", "le": "at most", "lt": "below"}
    return " ".join([noun, *(f"{words[k]} {v}" for k, v in bounds)])


def explain(exc: ValidationError) -> str:
    """A refused setting as one line a user can act on: the variable, the value given, what is allowed.

    The variables are what users type (`AUTH_MODE=jwtt`), so they are named as such, not as pydantic's
    field paths, and without its traceback or documentation links."""
    lines = []
    for error in exc.errors():
        if error["type"] == "value_error":  # our own validators' words already say what is wrong
            given = f" (given: {error['input']})" if error["loc"] else ""
            lines.append(str(error["msg"]).removeprefix("Value error, ") + given)
        elif error["loc"] and str(error["loc"][0]) in Settings.model_fields:
            field = str(error["loc"][0])
            lines.append(f"{field.upper()}={error['input']} is not allowed: use {_allowed(field)}")
        else:
            lines.append(str(error["msg"]))
    return "; ".join(lines)


def _addresses(spec: str) -> list[tuple[str, int]]:
    """ "host:port,host:port" as pairs."""
    pairs = [a.strip().rsplit(":", 1) for a in spec.split(",") if a.strip()]
    return [(h, int(p)) for h, p in pairs]
