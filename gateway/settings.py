"""One frozen, typed settings object, built once at the edge from ``GATEWAY_*`` variables
and command-line flags. Nothing else in the gateway reads the environment."""

from __future__ import annotations

import dataclasses
import inspect
import ipaddress
import os
import re
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal, get_args

from publisher.connection import RedisURLError, TLSOptions, check_url, tls_options
from publisher.keys import Keys
from publisher.secretinput import SecretError, read_secret

__all__ = ["ENV_PREFIX", "SECRET_FIELDS", "SHARED_ENV", "Settings", "SettingsError", "field_docs"]

ENV_PREFIX = "GATEWAY_"
LogFormat = Literal["text", "json"]


class SettingsError(ValueError):
    """A setting with a bad value; the message names the variable or flag."""


def _default_replica() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of a gateway replica; the README's configuration table lists them."""

    #: the address to listen on (0.0.0.0: every IPv4 interface)
    host: str = "127.0.0.1"
    #: the TCP port to listen on
    port: int = 8080
    #: uvicorn worker processes, each with its own Redis subscription
    workers: int = 1
    #: seconds ``gateway serve`` waits at start-up for Redis to answer before it gives up
    #: (exit status 1): a replica without Redis serves nothing
    startup_timeout: float = 5.0
    #: the Redis URL (``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://``,
    #: ``rediss+sentinel://``); a secret when it holds a password: GATEWAY_REDIS_URL_FILE.
    #: Unset, the publisher's KEV_REDIS_URL is read, so one variable serves both CLIs
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: the password of the URL's user when the URL has none (secret: prefer
    #: GATEWAY_REDIS_PASSWORD_FILE); empty: the URL's own, or none
    redis_password: str = field(default="", repr=False)
    #: the password for the Sentinels of a ``redis+sentinel://`` URL (their own
    #: ``requirepass`` or ACL user; secret: prefer GATEWAY_REDIS_SENTINEL_PASSWORD_FILE);
    #: empty: the URL's ``sentinel_password``, or none (the master's is never sent to them)
    redis_sentinel_password: str = field(default="", repr=False)
    #: TLS (``rediss://``): CA bundle (PEM path) the server's certificate must chain to;
    #: empty: the system's trust store. The URL's ``ssl_ca_certs`` wins.
    redis_tls_ca_file: str = ""
    #: TLS client certificate and its key (PEM paths), for ``tls-auth-clients yes``
    redis_tls_cert_file: str = ""
    redis_tls_key_file: str = ""
    #: TLS: how the server's certificate is checked: required, optional or none
    redis_tls_verify: str = "required"
    #: the key prefix shared with the publishers (several deployments may share a Redis)
    prefix: str = "kev"
    #: Redis connections for commands (identity lookups, replays) per replica; a burst of
    #: reconnecting clients waits for one instead of failing. The subscription has its own.
    redis_pool_size: int = 64
    #: seconds between ``: ping`` comments on every stream (0 disables them)
    ping_interval: float = 15.0
    #: the ``retry:`` hint, milliseconds
    retry_ms: int = 3000
    #: bytes a client may have queued before it is evicted as a slow consumer
    buffer_cap: int = 256 * 1024
    #: seconds one write to a client may take before the client is evicted
    write_deadline: float = 10.0
    #: seconds the hub waits after one flush before the next, gathering events into fewer,
    #: larger writes (0: flush every loop iteration; see the README's benchmark)
    flush_interval: float = 0.0
    #: SO_SNDBUF of each stream's socket, bytes (0: the kernel's autotuning, up to
    #: net.ipv4.tcp_wmem's max, 4 MiB by default, per stalled client)
    send_buffer: int = 256 * 1024
    #: seconds an identity lookup is cached per replica, and the period of the re-check of
    #: every open stream (at least 1 s): how long a change whose message was lost goes unseen
    identity_cache_ttl: float = 5.0
    #: seconds a signed request's date may be off the server's clock
    max_clock_skew: float = 900.0
    #: seconds between probe messages proving the subscription live (0 disables probing)
    probe_interval: float = 5.0
    #: seconds a stopping replica gives its streams to close (shorter than the k8s grace)
    drain_deadline: float = 10.0
    #: seconds a resuming client's stream lives at most (±15 % jitter) before it is ended
    #: with ``server_close`` (``rebalance``) and resumed, perhaps on a newer replica, so
    #: streams spread after a scale-out (0: forever). Only browser (cookie) streams and
    #: requests with Last-Event-ID or ``resumable=1``: the official SDKs do not resume.
    stream_max_lifetime: float = 0.0
    #: seconds a replica may stay unable to deliver (not ready while accepting) before
    #: /health fails, so the orchestrator's liveness probe restarts it (0: never)
    liveness_timeout: float = 300.0
    #: milliseconds a live event id may be ahead of Redis' clock and still be trusted
    max_id_skew_ms: int = 250
    #: streams one replica serves at most (503 beyond), and per access key across the whole
    #: fleet (429 beyond; counted in Redis, see ``stream_lease``)
    max_streams: int = 20_000
    max_streams_per_key: int = 100
    #: seconds a replica's per-key stream counts stay in Redis without renewal (renewed every
    #: third of it): how long a crashed replica's streams still count against their keys
    stream_lease: float = 3.0
    #: file descriptors kept free besides the streams and the Redis pool (health checks,
    #: connections not yet answered, logs): streams are capped at RLIMIT_NOFILE minus these,
    #: the pool and what the process had open at start (503 beyond)
    fd_reserve: int = 128
    #: milliseconds added at random (0..this) to every reconnect hint (``retry:`` and
    #: ``server_close``'s ``retry``), so the clients of a draining replica come back spread
    retry_jitter_ms: int = 3000
    #: seconds a stream may fall behind, measured as the age of the oldest byte written to
    #: its socket that the client's TCP has not acknowledged, before it is evicted
    #: (``slow_reader``; Linux only; 0: never)
    max_lag: float = 30.0
    #: largest Redis payload decoded; bigger ones are dropped and counted
    max_payload: int = 64 * 1024
    #: the API version ``GET /`` reports (Backend.AI SDKs pick their paths by it)
    api_version: str = "v4.20190615"
    #: origins allowed to open streams with credentials (browser EventSource); comma list
    cors_origins: tuple[str, ...] = ()
    #: browser session lifetime, seconds
    session_ttl: float = 8 * 3600.0
    #: browser sessions one access key holds at most; a login beyond it ends the oldest
    max_sessions_per_key: int = 20
    #: bytes of one request head (request line and every header) a replica reads at most,
    #: on every path; beyond it the answer is 431 and the connection closes
    max_header_bytes: int = 16 * 1024
    #: seconds a connection may go without a complete request head: from its opening, or
    #: from the end of its previous response (idle keep-alive). Then it is closed (408 if a
    #: head had begun). Longer than the load balancer's upstream keepalive timeout
    header_timeout: float = 15.0
    #: open connections one replica (each worker) serves at once, streams included; a
    #: request on a connection beyond it gets 503 with Retry-After
    max_connections: int = 25_000
    #: failed logins one account (user id or access key) may have before each further
    #: failure blocks it for a backoff; counted in Redis, shared by every replica
    login_free_failures: int = 5
    #: the same, per client address (see ``trusted_proxies``)
    login_free_failures_per_address: int = 20
    #: seconds of the first backoff after the free failures, doubling with each failure
    #: up to ``login_backoff_max``; a blocked login gets 429 with Retry-After
    login_backoff: float = 1.0
    login_backoff_max: float = 300.0
    #: seconds after its last failure that an account's or address' count is forgotten
    login_failure_window: float = 900.0
    #: password checks (scrypt, ~16 MiB and ~50 ms of CPU each) run at once per replica, in
    #: their own threads; and how many more may wait for one (503 beyond)
    login_hash_threads: int = 2
    login_hash_queue: int = 32
    #: networks (CIDR, comma list) of load balancers whose X-Forwarded-For names the client
    #: address the login throttle counts; a peer outside them is the client itself
    trusted_proxies: tuple[str, ...] = ()
    #: mark the browser session cookie ``Secure`` (whenever TLS is in front)
    cookie_secure: bool = False
    #: the lowest level logged: debug, info, warning or error
    log_level: str = "info"
    #: ``text`` or ``json`` (one JSON object per line), the same from every worker
    log_format: LogFormat = "text"
    #: this replica's name in logs and its probe channel (default: host-pid-random)
    replica: str = field(default_factory=_default_replica)

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                value = getattr(self, name)
                raise SettingsError(
                    f"{ENV_PREFIX}{name.upper()} (--{name.replace('_', '-')}): {what}, "
                    f"got {value!r}"
                )

        need(0 < self.port < 65536, "port", "must be a TCP port 1-65535")
        need(1 <= self.workers <= 256, "workers", "must be 1-256")
        need(0 < self.startup_timeout <= 600, "startup_timeout", "must be 0-600 s")
        try:
            check_url(self.redis_url)
        except RedisURLError as exc:
            raise SettingsError(f"{ENV_PREFIX}REDIS_URL (--redis-url): {exc}") from exc
        try:
            tls_options(self.redis_url, self._tls_defaults())
        except RedisURLError as exc:
            raise SettingsError(f"{ENV_PREFIX}REDIS_TLS_* (--redis-tls-*): {exc}") from exc
        try:
            Keys(self.prefix)
        except ValueError as exc:
            raise SettingsError(f"{ENV_PREFIX}PREFIX (--prefix): {exc}") from exc
        need(1 <= self.redis_pool_size <= 10_000, "redis_pool_size", "must be 1-10000")
        need(self.ping_interval >= 0, "ping_interval", "must be >= 0")
        need(0 <= self.retry_ms <= 3_600_000, "retry_ms", "must be 0-3600000")
        need(1024 <= self.buffer_cap <= 1 << 30, "buffer_cap", "must be 1 KiB - 1 GiB")
        need(0.1 <= self.write_deadline <= 3600, "write_deadline", "must be 0.1-3600 s")
        need(0 <= self.send_buffer <= 1 << 26, "send_buffer", "must be 0-64 MiB")
        need(0 <= self.flush_interval <= 1.0, "flush_interval", "must be 0-1 s")
        need(0 <= self.identity_cache_ttl <= 3600, "identity_cache_ttl", "must be 0-3600 s")
        need(0 < self.max_clock_skew <= 86400, "max_clock_skew", "must be 0-86400 s")
        need(self.probe_interval >= 0, "probe_interval", "must be >= 0")
        need(0 < self.drain_deadline <= 3600, "drain_deadline", "must be 0-3600 s")
        need(0 <= self.liveness_timeout <= 86400, "liveness_timeout", "must be 0-86400 s")
        need(
            self.stream_max_lifetime == 0 or 1 <= self.stream_max_lifetime <= 7 * 86400,
            "stream_max_lifetime",
            "must be 0 (off) or 1-604800 s",
        )
        need(0 <= self.max_id_skew_ms <= 3_600_000, "max_id_skew_ms", "must be 0-3600000")
        need(self.max_streams >= 1, "max_streams", "must be >= 1")
        need(self.max_streams_per_key >= 1, "max_streams_per_key", "must be >= 1")
        need(0.3 <= self.stream_lease <= 3600, "stream_lease", "must be 0.3-3600 s")
        need(0 <= self.fd_reserve <= 1 << 20, "fd_reserve", "must be 0-1048576")
        need(0 <= self.retry_jitter_ms <= 3_600_000, "retry_jitter_ms", "must be 0-3600000")
        need(0 <= self.max_lag <= 86400, "max_lag", "must be 0-86400 s")
        need(1024 <= self.max_payload <= 1 << 26, "max_payload", "must be 1 KiB - 64 MiB")
        need(self.session_ttl > 0, "session_ttl", "must be > 0")
        need(1 <= self.max_sessions_per_key <= 10_000, "max_sessions_per_key", "must be 1-10000")
        need(1024 <= self.max_header_bytes <= 1 << 20, "max_header_bytes", "must be 1 KiB - 1 MiB")
        need(0.1 <= self.header_timeout <= 3600, "header_timeout", "must be 0.1-3600 s")
        need(1 <= self.max_connections <= 1_000_000, "max_connections", "must be 1-1000000")
        need(self.login_free_failures >= 0, "login_free_failures", "must be >= 0")
        need(
            self.login_free_failures_per_address >= 0,
            "login_free_failures_per_address",
            "must be >= 0",
        )
        need(0 < self.login_backoff <= 3600, "login_backoff", "must be 0-3600 s")
        need(
            self.login_backoff <= self.login_backoff_max <= 86400,
            "login_backoff_max",
            "must be login_backoff-86400 s",
        )
        need(1 <= self.login_failure_window <= 86400, "login_failure_window", "must be 1-86400 s")
        need(1 <= self.login_hash_threads <= 64, "login_hash_threads", "must be 1-64")
        need(0 <= self.login_hash_queue <= 10_000, "login_hash_queue", "must be 0-10000")
        for network in self.trusted_proxies:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                need(False, "trusted_proxies", f"{network!r} is not an address or CIDR network")
        need(
            re.fullmatch(r"v[0-9]+\.[0-9]{8}", self.api_version) is not None,
            "api_version",
            "must be v<major>.<YYYYMMDD>",
        )
        need(
            self.log_level.lower() in ("debug", "info", "warning", "error"),
            "log_level",
            "must be debug, info, warning or error",
        )
        need(self.log_format in get_args(LogFormat), "log_format", "must be text or json")
        for origin in self.cors_origins:
            need(
                origin.startswith(("http://", "https://")) and origin.count("/") == 2,
                "cors_origins",
                "each origin must be scheme://host[:port] without a path",
            )

    def _tls_defaults(self) -> TLSOptions | None:
        if not (self.redis_tls_ca_file or self.redis_tls_cert_file or self.redis_tls_key_file
                or self.redis_tls_verify != "required"):  # fmt: skip
            return None
        return TLSOptions(
            ca_file=self.redis_tls_ca_file or None,
            cert_file=self.redis_tls_cert_file or None,
            key_file=self.redis_tls_key_file or None,
            verify=self.redis_tls_verify,  # type: ignore[arg-type]  # checked by TLSOptions
        )

    @property
    def redis_options(self) -> dict[str, Any]:
        """Keywords for :func:`publisher.connection.connect_async` besides the URL: the TLS
        options and the passwords (the master's, the Sentinels') of these settings."""
        return {
            "tls": self._tls_defaults(),
            "password": self.redis_password or None,
            "sentinel_password": self.redis_sentinel_password or None,
        }

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``GATEWAY_*`` from ``environ``, then ``overrides`` (CLI flags;
        ``None`` values are ignored). A secret field (:data:`SECRET_FIELDS`) may come from
        the file ``GATEWAY_<NAME>_FILE`` names instead (its variable wins when both are set).
        A field in :data:`SHARED_ENV` falls back last to the shared variable named there
        (``KEV_REDIS_URL``). Raises :class:`SettingsError` naming the variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            file_var = ENV_PREFIX + f.name.upper() + "_FILE"
            if raw is None and f.name in SECRET_FIELDS and env.get(file_var):
                try:
                    raw = read_secret(env[file_var], what=file_var)
                except SecretError as exc:
                    raise SettingsError(str(exc)) from None
            if raw is None and f.name in SHARED_ENV:
                raw = env.get(SHARED_ENV[f.name])
            if raw is not None:
                values[f.name] = cls.parse(f.name, raw)
        for name, value in overrides.items():
            if value is not None:
                values[name] = value
        return cls(**values)

    @classmethod
    def parse(cls, name: str, raw: str) -> Any:
        """The value of field ``name`` from its text form (an environment variable or a
        command-line flag): ints, floats, booleans (true/false, 1/0, yes/no, on/off) and
        comma lists. Raises :class:`SettingsError` naming the variable."""
        kind = _KINDS[name]
        try:
            if kind == "int":
                return int(raw)
            if kind == "float":
                return float(raw)
            if kind == "bool":
                lowered = raw.strip().lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off", ""):
                    return False
                raise ValueError("expected true/false")
            if kind.startswith("tuple"):
                return tuple(part.strip() for part in raw.split(",") if part.strip())
        except ValueError as exc:
            key = ENV_PREFIX + name.upper()
            raise SettingsError(f"{key}: {raw!r} is not a valid {kind} ({exc})") from exc
        return raw

    @classmethod
    def kind(cls, name: str) -> str:
        """The declared type of field ``name`` as written (``"int"``, ``"tuple[str, ...]"``)."""
        return _KINDS[name]

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """These settings as ``GATEWAY_*`` variables: what worker processes read back."""
        env: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                text = ",".join(value)
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            env[ENV_PREFIX + f.name.upper()] = text
        return env


#: variables the gateway shares with the publisher's CLI (``kev-publish``), read when the
#: field's own ``GATEWAY_*`` variable is unset: one export serves both commands
SHARED_ENV: Final = {"redis_url": "KEV_REDIS_URL"}

#: fields that may hold a secret: also read from the file ``GATEWAY_<NAME>_FILE`` names, and
#: given to ``gateway serve`` as ``--<name>-file`` (a flag's value is visible in ``ps``)
SECRET_FIELDS: Final = ("redis_url", "redis_password", "redis_sentinel_password")


def field_docs() -> dict[str, str]:
    """Each setting's meaning, from the ``#:`` comment above its field in :class:`Settings`
    (the one place it is written; ``gateway serve --help`` shows it), as one line of text.
    A comment above several consecutive fields describes each of them. Raises
    :class:`LookupError` for a field that has no comment (the docs test guards against it)."""
    docs: dict[str, str] = {}
    block: list[str] = []
    in_comment = False
    for line in inspect.getsource(Settings).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            if not in_comment:
                block = []
            in_comment = True
            block.append(stripped[2:].strip())
            continue
        in_comment = False
        if stripped.startswith("def "):
            break
        match = re.match(r"    (\w+): ", line)
        if match and match.group(1) in _KINDS:
            docs[match.group(1)] = " ".join(block).replace("``", "")
    missing = [name for name in _KINDS if not docs.get(name)]
    if missing:
        raise LookupError(f"settings without a #: comment: {', '.join(missing)}")
    return docs


#: each field's declared type, as written in the class (annotations are strings here)
_KINDS: Final[dict[str, str]] = {
    f.name: f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    for f in fields(Settings)
}
