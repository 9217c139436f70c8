"""One frozen, typed settings object, built once at the edge from ``GATEWAY_*`` variables
and command-line flags. Nothing else in the gateway reads the environment."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal, get_args

from publisher.connection import RedisURLError, check_url
from publisher.keys import Keys

__all__ = ["ENV_PREFIX", "Settings", "SettingsError"]

ENV_PREFIX = "GATEWAY_"
LogFormat = Literal["text", "json"]


class SettingsError(ValueError):
    """A setting with a bad value; the message names the variable or flag."""


def _default_replica() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of a gateway replica; the README's configuration table lists them."""

    host: str = "127.0.0.1"
    port: int = 8081
    workers: int = 1
    redis_url: str = "redis://127.0.0.1:6379/0"
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
    #: seconds an identity lookup is cached per replica (= how long a revoked key still works)
    identity_cache_ttl: float = 5.0
    #: seconds a signed request's date may be off the server's clock
    max_clock_skew: float = 900.0
    #: seconds between probe messages proving the subscription live (0 disables probing)
    probe_interval: float = 5.0
    #: seconds a stopping replica gives its streams to close (shorter than the k8s grace)
    drain_deadline: float = 10.0
    #: seconds a replica may stay unable to deliver (not ready while accepting) before
    #: /health fails, so the orchestrator's liveness probe restarts it (0: never)
    liveness_timeout: float = 300.0
    #: milliseconds a live event id may be ahead of Redis' clock and still be trusted
    max_id_skew_ms: int = 250
    #: streams one replica serves at most (503 beyond), and per access key (429 beyond)
    max_streams: int = 20_000
    max_streams_per_key: int = 100
    #: largest Redis payload decoded; bigger ones are dropped and counted
    max_payload: int = 64 * 1024
    #: the API version ``GET /`` reports (Backend.AI SDKs pick their paths by it)
    api_version: str = "v4.20190615"
    #: origins allowed to open streams with credentials (browser EventSource); comma list
    cors_origins: tuple[str, ...] = ()
    #: browser session lifetime, seconds
    session_ttl: float = 8 * 3600.0
    cookie_secure: bool = False
    log_level: str = "info"
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
        try:
            check_url(self.redis_url)
        except RedisURLError as exc:
            raise SettingsError(f"{ENV_PREFIX}REDIS_URL (--redis-url): {exc}") from exc
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
        need(0 <= self.max_id_skew_ms <= 3_600_000, "max_id_skew_ms", "must be 0-3600000")
        need(self.max_streams >= 1, "max_streams", "must be >= 1")
        need(self.max_streams_per_key >= 1, "max_streams_per_key", "must be >= 1")
        need(1024 <= self.max_payload <= 1 << 26, "max_payload", "must be 1 KiB - 64 MiB")
        need(self.session_ttl > 0, "session_ttl", "must be > 0")
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

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``GATEWAY_*`` from ``environ``, then ``overrides`` (CLI flags;
        ``None`` values are ignored)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
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


#: each field's declared type, as written in the class (annotations are strings here)
_KINDS: Final[dict[str, str]] = {
    f.name: f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    for f in fields(Settings)
}
