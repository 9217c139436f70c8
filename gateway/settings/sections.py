"""The gateway's settings, declared: one ``msgspec.Struct`` per section, each field with its
type, bounds and meaning (``Annotated[int, Meta(ge=1, le=256, description=...)]``), and the
checks that span fields or parse a value (:meth:`Section.check`). :mod:`gateway.settings`
loads them from the environment and flags."""

from __future__ import annotations

import ipaddress
import os
import socket
import uuid
from typing import Annotated, Any, ClassVar, Final, Literal
from urllib.parse import parse_qsl, urlsplit

import msgspec

from publisher.connection import (
    RedisURLError,
    TLSOptions,
    check_url,
    redact_url,
    tls_options,
    with_default_db,
)
from publisher.keys import Keys
from publisher.partitions import MAX_PARTITIONS, Partitions

__all__ = [
    "ENV_PREFIX",
    "SECTIONS",
    "BridgeSection",
    "BrowserSettings",
    "FanoutSettings",
    "IdentitySettings",
    "LimitSettings",
    "RedisSettings",
    "Section",
    "ServerSettings",
    "SettingsError",
    "SyncSection",
]

ENV_PREFIX: Final = "GATEWAY_"


class SettingsError(ValueError):
    """A setting with a bad value; the message names the variable (and the flag)."""


def _default_replica() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def _meta(description: str, **bounds: Any) -> msgspec.Meta:
    return msgspec.Meta(description=description, **bounds)


# The types the fields use, with their bounds; the description is the field's meaning, one
# sentence or two, as `gateway serve --help` and the README's table show it.
Seconds = float
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]
VerifyMode = Literal["required", "optional", "none"]


class Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A group of settings (see the module docstring)."""

    #: prepended to a field's name to make its flat name
    env_prefix: ClassVar[str] = ""
    #: put between ``GATEWAY_`` and the flat name in the environment variable only (the
    #: flag stays ``--<flat name>``): a command's own section
    env_group: ClassVar[str] = ""

    def check(self) -> None:
        """Checks beyond one field's type and bounds; raises :class:`SettingsError`."""


class ServerSettings(Section, frozen=True):
    """The process: where it listens, how many workers, how it starts, logs and stops."""

    host: Annotated[str, _meta("the address to listen on (0.0.0.0: every IPv4 interface)")] = (
        "127.0.0.1"
    )
    port: Annotated[Port, _meta("the TCP port to listen on")] = 8080
    workers: Annotated[
        int, _meta("uvicorn worker processes, each with its own Redis subscription", ge=1, le=256)
    ] = 1
    startup_timeout: Annotated[
        Seconds,
        _meta(
            "seconds gateway serve waits at start-up for Redis to answer before it gives up "
            "(exit status 1): a replica without Redis serves nothing",
            gt=0,
            le=600,
        ),
    ] = 5.0
    drain_deadline: Annotated[
        Seconds,
        _meta(
            "seconds a stopping replica gives its streams to close (shorter than the k8s grace)",
            gt=0,
            le=3600,
        ),
    ] = 10.0
    handoff_ttl: Annotated[
        Seconds,
        _meta(
            "seconds a drained replica keeps where each SDK stream (signed, no Last-Event-ID) "
            "stood, for its reconnect to resume from (0: no handoff; they get server_close)",
            ge=0,
            le=3600,
        ),
    ] = 60.0
    liveness_timeout: Annotated[
        Seconds,
        _meta(
            "seconds a replica may stay unable to deliver (not ready while accepting) before "
            "/health fails, so the orchestrator's liveness probe restarts it (0: never)",
            ge=0,
            le=86400,
        ),
    ] = 300.0
    api_version: Annotated[
        str,
        _meta(
            "the API version GET / reports (Backend.AI SDKs pick their paths by it): auto, "
            "each SDK generation its own (from its User-Agent; others the newest), or one "
            "version for all",
            pattern=r"^(auto|v[0-9]+\.[0-9]{8})$",
            extra={"expected": "auto, or v<major>.<YYYYMMDD>, e.g. v4.20190615"},
        ),
    ] = "auto"
    log_level: Annotated[
        LogLevel, _meta("the lowest level logged: debug, info, warning or error")
    ] = "info"
    log_format: Annotated[
        LogFormat, _meta("text or json (one JSON object per line), the same from every worker")
    ] = "text"
    replica: Annotated[
        str,
        _meta("this replica's name in logs and its probe channel (default: host-pid-random)"),
    ] = msgspec.field(default_factory=_default_replica)


class RedisSettings(Section, frozen=True):
    """The Redis the replica shares with the publishers: where, who, TLS, key prefix."""

    env_prefix: ClassVar[str] = "redis_"

    url: Annotated[
        str,
        _meta(
            "the Redis URL (redis://, rediss://, unix://, redis+sentinel://, "
            "rediss+sentinel://, redis+cluster://, rediss+cluster://); a secret when it "
            "holds a password: GATEWAY_REDIS_URL_FILE. "
            "Unset, the publisher's KEV_REDIS_URL is read, so one variable serves both CLIs",
            extra={"secret": True, "shared_env": "KEV_REDIS_URL"},
        ),
    ] = "redis://127.0.0.1:6379/0"
    password: Annotated[
        str,
        _meta(
            "the password of the URL's user when the URL has none (secret: prefer "
            "GATEWAY_REDIS_PASSWORD_FILE); empty: the URL's own, or none",
            extra={"secret": True},
        ),
    ] = ""
    sentinel_password: Annotated[
        str,
        _meta(
            "the password for the Sentinels of a redis+sentinel:// URL (their own requirepass "
            "or ACL user; secret: prefer GATEWAY_REDIS_SENTINEL_PASSWORD_FILE); empty: the "
            "URL's sentinel_password, or none (the master's is never sent to them)",
            extra={"secret": True},
        ),
    ] = ""
    tls_ca_file: Annotated[
        str,
        _meta(
            "TLS (rediss://): CA bundle (PEM path) the server's certificate must chain to; "
            "empty: the system's trust store. The URL's ssl_ca_certs wins"
        ),
    ] = ""
    tls_cert_file: Annotated[
        str, _meta("TLS client certificate (PEM path), for tls-auth-clients yes")
    ] = ""
    tls_key_file: Annotated[str, _meta("the TLS client certificate's key (PEM path)")] = ""
    tls_verify: Annotated[
        VerifyMode,
        _meta("TLS: how the server's certificate is checked: required, optional or none"),
    ] = "required"
    pool_size: Annotated[
        int,
        _meta(
            "Redis connections for commands (identity lookups, replays) per replica; a burst "
            "of reconnecting clients waits for one instead of failing. The subscription has "
            "its own",
            ge=1,
            le=10_000,
        ),
    ] = 64
    prefix: Annotated[
        str,
        _meta(
            "the key prefix shared with the publishers (several deployments may share a Redis)",
            extra={"name": "prefix"},
        ),
    ] = "kev"
    partitions: Annotated[
        int,
        _meta(
            "how many partitions the event bus has, each its own history, epoch and live "
            "channel (a slot of its own on a cluster); a user's events are in one, chosen "
            "from the owner. Every publisher, replica, bridge and admin command of a "
            "deployment must say the same (Redis records it; a mismatch refuses to start). "
            "1 keeps the names of an install without partitions",
            ge=1,
            le=MAX_PARTITIONS,
        ),
    ] = 1
    partition_linger: Annotated[
        Seconds,
        _meta(
            "with partitions: seconds a replica stays subscribed to a partition (beyond "
            "partition 0) after its last stream that needs it ended (0: subscribed to every "
            "partition, always)",
            ge=0,
            le=86400,
        ),
    ] = 30.0

    def partition_set(self) -> Partitions:
        """The partitions of :meth:`keys`."""
        return Partitions(self.keys(), self.partitions)

    def keys(self) -> Keys:
        """The key names of :attr:`prefix` on the Redis :attr:`url` names (hash-tagged on a
        cluster: :meth:`publisher.keys.Keys.for_url`)."""
        return Keys.for_url(self.url, self.prefix)

    def tls(self) -> TLSOptions | None:
        """The TLS options of these settings (the URL's own parameters win over them)."""
        if not (self.tls_ca_file or self.tls_cert_file or self.tls_key_file
                or self.tls_verify != "required"):  # fmt: skip
            return None
        return TLSOptions(
            ca_file=self.tls_ca_file or None,
            cert_file=self.tls_cert_file or None,
            key_file=self.tls_key_file or None,
            verify=self.tls_verify,
        )

    @property
    def options(self) -> dict[str, Any]:
        """Keywords for :func:`publisher.connection.connect_async` besides the URL: the TLS
        options and the passwords (the master's, the Sentinels')."""
        return {
            "tls": self.tls(),
            "password": self.password or None,
            "sentinel_password": self.sentinel_password or None,
        }

    def check(self) -> None:
        try:
            check_url(self.url)
        except RedisURLError as exc:
            raise SettingsError(f"{ENV_PREFIX}REDIS_URL (--redis-url): {exc}") from exc
        try:
            tls_options(self.url, self.tls())
        except RedisURLError as exc:
            raise SettingsError(f"{ENV_PREFIX}REDIS_TLS_* (--redis-tls-*): {exc}") from exc
        try:
            self.keys()  # on a cluster, the prefix must make a hash tag
        except ValueError as exc:
            raise SettingsError(f"{ENV_PREFIX}PREFIX (--prefix): {exc}") from exc

    def __repr__(self) -> str:  # never a password, in a log line or a traceback
        hidden = {
            "password": "***" if self.password else "",
            "sentinel_password": "***" if self.sentinel_password else "",
        }
        shown = {
            name: hidden.get(name, redact_url(self.url) if name == "url" else getattr(self, name))
            for name in self.__struct_fields__
        }
        return "RedisSettings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


class FanoutSettings(Section, frozen=True):
    """The fan-out core: each stream's buffer, writes, pacing, eviction, and the subscription."""

    ping_interval: Annotated[
        Seconds, _meta("seconds between : ping comments on every stream (0 disables them)", ge=0)
    ] = 15.0
    retry_ms: Annotated[int, _meta("the retry: hint, milliseconds", ge=0, le=3_600_000)] = 3000
    retry_jitter_ms: Annotated[
        int,
        _meta(
            "milliseconds added at random (0..this) to every reconnect hint (retry: and "
            "server_close's retry), so the clients of a draining replica come back spread",
            ge=0,
            le=3_600_000,
        ),
    ] = 3000
    buffer_cap: Annotated[
        int,
        _meta(
            "bytes a client may have queued before it is evicted as a slow consumer",
            ge=1024,
            le=1 << 30,
        ),
    ] = 256 * 1024
    write_deadline: Annotated[
        Seconds,
        _meta(
            "seconds one write to a client may take before the client is evicted",
            ge=0.1,
            le=3600,
        ),
    ] = 10.0
    flush_interval: Annotated[
        Seconds,
        _meta(
            "seconds the hub waits after one flush before the next, gathering events into "
            "fewer, larger writes (0: flush every loop iteration; see the README's benchmark)",
            ge=0,
            le=1.0,
        ),
    ] = 0.0
    send_buffer: Annotated[
        int,
        _meta(
            "SO_SNDBUF of each stream's socket, bytes (0: the kernel's autotuning, up to "
            "net.ipv4.tcp_wmem's max, 4 MiB by default, per stalled client)",
            ge=0,
            le=1 << 26,
        ),
    ] = 256 * 1024
    max_lag: Annotated[
        Seconds,
        _meta(
            "seconds a stream may fall behind, measured as the age of the oldest byte written "
            "to its socket that the client's TCP has not acknowledged, before it is evicted "
            "(slow_reader; Linux only; 0: never)",
            ge=0,
            le=86400,
        ),
    ] = 30.0
    max_payload: Annotated[
        int,
        _meta(
            "largest Redis payload decoded; bigger ones are dropped and counted",
            ge=1024,
            le=1 << 26,
        ),
    ] = 64 * 1024
    max_id_skew_ms: Annotated[
        int,
        _meta(
            "milliseconds the history's last id may be ahead of Redis' clock before /ready "
            "fails (an id written in the future)",
            ge=0,
            le=3_600_000,
        ),
    ] = 250
    probe_interval: Annotated[
        Seconds,
        _meta(
            "seconds between probe messages proving the subscription live (0 disables probing)",
            ge=0,
        ),
    ] = 5.0
    stream_max_lifetime: Annotated[
        Seconds,
        _meta(
            "seconds a resuming client's stream lives at most (±15 % jitter) before it is "
            "ended with server_close (rebalance) and resumed, perhaps on a newer replica, so "
            "streams spread after a scale-out (0: forever). Only browser (cookie) streams and "
            "requests with Last-Event-ID or resumable=1: the official SDKs do not resume",
            ge=0,
            le=7 * 86400,
            extra={"expected": "0 (off) or 1-604800 s"},
        ),
    ] = 0.0

    def check(self) -> None:
        if 0 < self.stream_max_lifetime < 1:
            raise SettingsError(
                f"{ENV_PREFIX}STREAM_MAX_LIFETIME (--stream-max-lifetime): must be 0 (off) or "
                f"1-604800 s, got {self.stream_max_lifetime!r}"
            )


class LimitSettings(Section, frozen=True):
    """How much one replica, one access key and one connection may take."""

    max_streams: Annotated[int, _meta("streams one replica serves at most (503 beyond)", ge=1)] = (
        20_000
    )
    max_streams_per_key: Annotated[
        int,
        _meta(
            "streams per access key across the whole fleet (429 beyond; counted in Redis, "
            "see stream_lease)",
            ge=1,
        ),
    ] = 100
    stream_lease: Annotated[
        Seconds,
        _meta(
            "seconds a replica's per-key stream counts stay in Redis without renewal (renewed "
            "every third of it): how long a crashed replica's streams still count against "
            "their keys",
            ge=0.3,
            le=3600,
        ),
    ] = 3.0
    fd_reserve: Annotated[
        int,
        _meta(
            "file descriptors kept free besides the streams and the Redis pool (health "
            "checks, connections not yet answered, logs): streams are capped at RLIMIT_NOFILE "
            "minus these, the pool and what the process had open at start (503 beyond)",
            ge=0,
            le=1 << 20,
        ),
    ] = 128
    max_header_bytes: Annotated[
        int,
        _meta(
            "bytes of one request head (request line and every header) a replica reads at "
            "most, on every path; beyond it the answer is 431 and the connection closes",
            ge=1024,
            le=1 << 20,
        ),
    ] = 16 * 1024
    header_timeout: Annotated[
        Seconds,
        _meta(
            "seconds a connection may go without a complete request head: from its opening, "
            "or from the end of its previous response (idle keep-alive). Then it is closed "
            "(408 if a head had begun). Longer than the load balancer's upstream keepalive "
            "timeout",
            ge=0.1,
            le=3600,
        ),
    ] = 15.0
    max_connections: Annotated[
        int,
        _meta(
            "open connections one replica (each worker) serves at once, streams included; a "
            "request on a connection beyond it gets 503 with Retry-After",
            ge=1,
            le=1_000_000,
        ),
    ] = 25_000


class IdentitySettings(Section, frozen=True):
    """Who may call: the identity cache and the signature's clock."""

    identity_cache_ttl: Annotated[
        Seconds,
        _meta(
            "seconds an identity lookup is cached per replica, and the period of the re-check "
            "of every open stream (at least 1 s): how long a change whose message was lost "
            "goes unseen",
            ge=0,
            le=3600,
        ),
    ] = 5.0
    max_clock_skew: Annotated[
        Seconds,
        _meta("seconds a signed request's date may be off the server's clock", gt=0, le=86400),
    ] = 900.0
    backendai_sessions: Annotated[
        str,
        _meta(
            "the Redis URL of Backend.AI's web server (its console sessions, database 0 unless "
            "the URL names another): a request with its AIOHTTP_SESSION cookie or "
            "X-BackendAI-SessionID header streams as that session's keypair; empty: off. A "
            "secret when it holds a password: GATEWAY_BACKENDAI_SESSIONS_FILE",
            extra={"secret": True},
        ),
    ] = ""

    def check(self) -> None:
        if self.backendai_sessions:
            try:
                check_url(self.backendai_sessions)
            except RedisURLError as exc:
                raise SettingsError(
                    f"{ENV_PREFIX}BACKENDAI_SESSIONS (--backendai-sessions): {exc}"
                ) from exc

    def __repr__(self) -> str:  # never a password, in a log line or a traceback
        shown = {
            name: redact_url(value) if name == "backendai_sessions" and value else value
            for name in self.__struct_fields__
            for value in (getattr(self, name),)
        }
        return "IdentitySettings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


class BrowserSettings(Section, frozen=True):
    """Browser sessions: their lifetime and cookie, CORS, and what bounds a login."""

    session_ttl: Annotated[Seconds, _meta("browser session lifetime, seconds", gt=0)] = 8 * 3600.0
    max_sessions_per_key: Annotated[
        int,
        _meta(
            "browser sessions one access key holds at most; a login beyond it ends the oldest",
            ge=1,
            le=10_000,
        ),
    ] = 20
    cookie_secure: Annotated[
        bool, _meta("mark the browser session cookie Secure (whenever TLS is in front)")
    ] = False
    cors_origins: Annotated[
        tuple[str, ...],
        _meta("origins allowed to open streams with credentials (browser EventSource); comma list"),
    ] = ()
    trusted_proxies: Annotated[
        tuple[str, ...],
        _meta(
            "networks (CIDR, comma list) of load balancers whose X-Forwarded-For names the "
            "client address the login throttle counts; a peer outside them is the client itself"
        ),
    ] = ()
    login_free_failures: Annotated[
        int,
        _meta(
            "failed logins one account (user id or access key) may have before each further "
            "failure blocks it for a backoff; counted in Redis, shared by every replica",
            ge=0,
        ),
    ] = 5
    login_free_failures_per_address: Annotated[
        int, _meta("the same, per client address (see trusted_proxies)", ge=0)
    ] = 20
    login_backoff: Annotated[
        Seconds,
        _meta(
            "seconds of the first backoff after the free failures, doubling with each failure "
            "up to login_backoff_max; a blocked login gets 429 with Retry-After",
            gt=0,
            le=3600,
        ),
    ] = 1.0
    login_backoff_max: Annotated[
        Seconds, _meta("the longest backoff, seconds (login_backoff-86400)", le=86400)
    ] = 300.0
    login_failure_window: Annotated[
        Seconds,
        _meta(
            "seconds after its last failure that an account's or address' count is forgotten",
            ge=1,
            le=86400,
        ),
    ] = 900.0
    login_hash_threads: Annotated[
        int,
        _meta(
            "password checks (scrypt, ~16 MiB and ~50 ms of CPU each) run at once per "
            "replica, in their own threads",
            ge=1,
            le=64,
        ),
    ] = 2
    login_hash_queue: Annotated[
        int,
        _meta("password checks that may wait for a thread (503 beyond)", ge=0, le=10_000),
    ] = 32

    def check(self) -> None:
        if self.login_backoff_max < self.login_backoff:
            raise SettingsError(
                f"{ENV_PREFIX}LOGIN_BACKOFF_MAX (--login-backoff-max): must be "
                f"login_backoff-86400 s, got {self.login_backoff_max!r}"
            )
        for network in self.trusted_proxies:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise SettingsError(
                    f"{ENV_PREFIX}TRUSTED_PROXIES (--trusted-proxies): {network!r} is not an "
                    "address or CIDR network"
                ) from None
        for origin in self.cors_origins:
            if not (origin.startswith(("http://", "https://")) and origin.count("/") == 2):
                raise SettingsError(
                    f"{ENV_PREFIX}CORS_ORIGINS (--cors-origins): each origin must be "
                    f"scheme://host[:port] without a path, got {origin!r}"
                )


#: the Redis database Backend.AI's event bus lives in (``REDIS_STREAM_DB``: manager/defs.py
#: 22.09.0 L61, common/defs.py 23.09.0 L8, common/defs/__init__.py 26.8.1 L10)
BACKENDAI_STREAM_DB: Final = 4
_DSN_SCHEMES: Final = ("postgresql://", "postgres://")


def redact_dsn(dsn: str) -> str:
    """A PostgreSQL URL with its password replaced by ``***`` (the way it goes into a log)."""
    return redact_url(dsn)


class BridgeSection(Section, frozen=True):
    """``gateway bridge``: where an unmodified Backend.AI's event bus and database are, and how
    the bridge follows them (variables ``GATEWAY_BRIDGE_<NAME>``, flags ``--<name>``)."""

    env_group: ClassVar[str] = "bridge_"

    from_redis: Annotated[
        str,
        _meta(
            "Backend.AI's Redis URL (its event bus; database 4 unless the URL names another; "
            "redis://, rediss://, unix://, redis+sentinel://); a secret when it holds a "
            "password: GATEWAY_BRIDGE_FROM_REDIS_FILE",
            extra={"secret": True},
        ),
    ] = ""
    from_db: Annotated[
        str,
        _meta(
            "Backend.AI's PostgreSQL (postgresql://user:password@host:port/db; a read-only "
            "role is enough, see the README); a secret: GATEWAY_BRIDGE_FROM_DB_FILE",
            extra={"secret": True},
        ),
    ] = ""
    format: Annotated[
        Literal["auto", "stream", "pubsub"],
        _meta(
            "Backend.AI's bus generation: stream (22.09-25.10: the events stream), pubsub "
            "(25.11 and later: the events_all channel) or auto (detected; the log says which "
            "and why)"
        ),
    ] = "auto"
    name: Annotated[
        str,
        _meta(
            "this bridged installation's name: its position, lease and state keys, and the "
            "source of its events (one name per Backend.AI; a standby uses the same)",
            pattern=r"^[A-Za-z0-9_.\-]{1,64}$",
        ),
    ] = "backendai"
    host: Annotated[
        str, _meta("the address the bridge's /metrics, /health and /ready listen on")
    ] = "127.0.0.1"
    port: Annotated[Port, _meta("the port of /metrics, /health and /ready")] = 9180
    lease_ttl: Annotated[
        Seconds,
        _meta(
            "seconds the active bridge's lease lives without renewal (renewed every third of "
            "it): how soon a standby takes over from a bridge that died",
            ge=1,
            le=300,
        ),
    ] = 5.0
    batch: Annotated[
        int,
        _meta("source entries read, looked up and published together at most", ge=1, le=10_000),
    ] = 256
    lookup_timeout: Annotated[
        Seconds,
        _meta(
            "seconds an event whose row PostgreSQL does not show yet (the manager's "
            "transaction not yet committed) is looked up again (after 50, 200 ms, then every "
            "second) before it is dropped and counted",
            ge=0,
            le=600,
        ),
    ] = 1.5
    cache_size: Annotated[
        int,
        _meta("kernel and session rows kept in memory, most recently used", ge=0, le=10_000_000),
    ] = 100_000
    maxlen: Annotated[
        int,
        _meta(
            "the gateway history's length bound the bridge's writes keep (as a publisher's)",
            ge=1,
        ),
    ] = 100_000
    reconcile_limit: Annotated[
        Seconds,
        _meta(
            "seconds back the reconciliation after an outage looks at most (sessions that "
            "ended longer ago than this are not told)",
            ge=0,
            le=30 * 86400,
        ),
    ] = 86400.0
    log_level: Annotated[LogLevel, _meta("the lowest level logged")] = "info"
    log_format: Annotated[LogFormat, _meta("text or json (one JSON object per line)")] = "text"

    @property
    def source_url(self) -> str:
        """:attr:`from_redis`, naming Backend.AI's database 4 when it names none."""
        return with_default_db(self.from_redis, BACKENDAI_STREAM_DB)

    def check(self) -> None:
        if not self.from_redis:
            raise SettingsError(
                f"{ENV_PREFIX}BRIDGE_FROM_REDIS (--from-redis): Backend.AI's Redis URL is needed"
            )
        try:
            check_url(self.from_redis)
        except RedisURLError as exc:
            raise SettingsError(f"{ENV_PREFIX}BRIDGE_FROM_REDIS (--from-redis): {exc}") from exc
        _check_dsn(self.from_db, f"{ENV_PREFIX}BRIDGE_FROM_DB")

    def __repr__(self) -> str:  # never a password, in a log line or a traceback
        shown = {
            name: redact_url(getattr(self, name))
            if name in ("from_redis", "from_db")
            else getattr(self, name)
            for name in self.__struct_fields__
        }
        return "BridgeSection(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


class SyncSection(Section, frozen=True):
    """``gateway sync-identities``: where an unmodified Backend.AI's PostgreSQL is, and how
    often its identities are copied into the gateway's store (variables
    ``GATEWAY_SYNC_<NAME>``, flags ``--<name>``)."""

    env_group: ClassVar[str] = "sync_"

    from_db: Annotated[
        str,
        _meta(
            "Backend.AI's PostgreSQL (postgresql://user:password@host:port/db; a read-only "
            "role with the identity columns is enough, see the README); a secret: "
            "GATEWAY_SYNC_FROM_DB_FILE",
            extra={"secret": True},
        ),
    ] = ""
    interval: Annotated[
        Seconds, _meta("seconds between two syncs (each reads the whole snapshot)", gt=0, le=3600)
    ] = 10.0
    max_removal_share: Annotated[
        float,
        _meta(
            "the share of the synced, streaming keypairs one sync may remove or deactivate; a "
            "snapshot that would take more is refused and logged (a truncated or wrong "
            "database must not lock everyone out) unless --force",
            gt=0,
            le=1,
            extra={"unit": ""},
        ),
    ] = 0.5
    lease_ttl: Annotated[
        Seconds,
        _meta(
            "seconds the active syncer's lease lives without renewal: how soon a standby "
            "takes over",
            ge=1,
            le=300,
        ),
    ] = 15.0
    host: Annotated[
        str, _meta("the address the syncer's /metrics, /health and /ready listen on")
    ] = "127.0.0.1"
    port: Annotated[Port, _meta("the port of /metrics, /health and /ready")] = 9181
    log_level: Annotated[LogLevel, _meta("the lowest level logged")] = "info"
    log_format: Annotated[LogFormat, _meta("text or json (one JSON object per line)")] = "text"

    def check(self) -> None:
        _check_dsn(self.from_db, f"{ENV_PREFIX}SYNC_FROM_DB")

    def __repr__(self) -> str:  # never a password, in a log line or a traceback
        shown = {
            name: redact_url(getattr(self, name)) if name == "from_db" else getattr(self, name)
            for name in self.__struct_fields__
        }
        return "SyncSection(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


#: libpq's sslmode values (PostgreSQL docs, "Connection Strings": sslmode)
_SSLMODES: Final = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})


def _check_dsn(dsn: str, variable: str) -> None:
    """Raise :class:`SettingsError` naming ``variable`` unless ``dsn`` is a usable
    ``postgresql://`` URL (its password never in the message)."""
    if not dsn.startswith(_DSN_SCHEMES):
        raise SettingsError(
            f"{variable} (--from-db): Backend.AI's PostgreSQL URL is needed "
            f"(postgresql://user:password@host:port/dbname), got {redact_dsn(dsn)!r}"
        )
    problem = dsn_problem(dsn)
    if problem:
        raise SettingsError(f"{variable} (--from-db): {redact_dsn(dsn)!r}: {problem}")


def dsn_problem(dsn: str) -> str | None:
    """What is wrong with a ``postgresql://`` URL that asyncpg would only find on its first
    connection (a ValueError mid-run, or a retry forever), or None."""
    try:
        parts = urlsplit(dsn)
        parts.port  # noqa: B018 - a port that is not a number raises here
    except ValueError as exc:
        return str(exc)
    if not parts.hostname and "host=" not in parts.query:
        return "no host"
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "sslmode" and value not in _SSLMODES:
            return f"sslmode must be one of {', '.join(sorted(_SSLMODES))}, got {value!r}"
    return None


#: the sections, by the attribute of :class:`Settings` that holds each
SECTIONS: Final[dict[str, type[Section]]] = {
    "server": ServerSettings,
    "redis": RedisSettings,
    "fanout": FanoutSettings,
    "limits": LimitSettings,
    "identity": IdentitySettings,
    "browser": BrowserSettings,
}
