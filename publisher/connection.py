"""Redis connections from one URL, for the publisher and the gateway alike.

Accepted forms:

* ``redis://[[user]:password@]host[:port][/db]`` and ``rediss://`` (TLS)
* ``unix:///path/to/redis.sock[?db=N]``
* ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]``: the
  master of ``service_name`` as the given Sentinels report it, re-resolved on failover;
  ``rediss+sentinel://`` is the same over TLS, to the Sentinels and to the master. The user
  and password are the master's only; the Sentinels are asked without any, unless the query
  gives them their own: ``?sentinel_username=NAME&sentinel_password=SECRET`` (or
  ``sentinel_password=`` alone, for a Sentinel with ``requirepass``), or the
  ``sentinel_password`` keyword of :func:`connect_async` / :func:`connect_sync` (the
  gateway's ``redis_sentinel_password`` setting, ``kev-publish``'s
  ``KEV_REDIS_SENTINEL_PASSWORD[_FILE]``; the URL's parameter wins).
* ``redis+cluster://[[user]:password@]host:port[,host:port...][/0]``: a Redis Cluster (or
  Valkey in cluster mode), found from the given seed nodes (any one reachable is enough; the
  client learns the rest and follows failovers and resharding by ``MOVED``);
  ``rediss+cluster://`` is the same over TLS. A cluster has database 0 only. The client is
  redis-py's :class:`redis.asyncio.RedisCluster` (:func:`is_cluster` tells them apart);
  what one key prefix keeps on a cluster is in :mod:`publisher.keys`.

TLS options, as query parameters of a ``rediss://`` or ``rediss+sentinel://`` URL (the names
redis-py's own URLs use) or as :class:`TLSOptions` (the gateway's ``redis_tls_*`` settings;
the URL's parameters win):

* ``ssl_ca_certs=/path/ca.pem``: the CA bundle that signed the server's certificate
  (default: the system's trust store);
* ``ssl_certfile=/path/client.crt`` and ``ssl_keyfile=/path/client.key``: a client
  certificate, for a Redis with ``tls-auth-clients yes``;
* ``ssl_cert_reqs=required|optional|none``: how the server's certificate is verified;
* ``ssl_check_hostname=true|false``: whether its name must match the URL's host (default:
  true when ``ssl_cert_reqs`` is ``required``).

:func:`redact_url` is the one way a URL goes into a message or a log line: its password
never does.
"""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass
from typing import Any, Final, Literal, cast, get_args
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio as aredis
import redis.asyncio.cluster as acluster
import redis.cluster as scluster
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.commands.core import Script
from redis.sentinel import Sentinel

__all__ = [
    "ClusterTarget",
    "ClusterUnavailableError",
    "RedisURLError",
    "SentinelTarget",
    "TLSOptions",
    "check_url",
    "connect_async",
    "connect_node_async",
    "connect_sync",
    "is_cluster",
    "is_cluster_url",
    "parse_cluster",
    "parse_sentinel",
    "redact_url",
    "tls_options",
    "with_default_db",
]

_SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
    "redis+cluster",
    "rediss+cluster",
)
_SENTINEL_SCHEMES: Final = ("redis+sentinel", "rediss+sentinel")
_CLUSTER_SCHEMES: Final = ("redis+cluster", "rediss+cluster")
_TLS_SCHEMES: Final = ("rediss", "rediss+sentinel", "rediss+cluster")
#: the client options a script's encoding depends on
_ENCODING_OPTIONS: Final = ("encoding", "encoding_errors", "decode_responses")
#: query parameters whose values are secrets (redis-py passes unknown ones on as options)
_SECRET_PARAMS: Final = frozenset({"password", "ssl_password", "sentinel_password"})
#: query parameters of a Sentinel URL: the credentials for the Sentinels themselves
_SENTINEL_PARAMS: Final = ("sentinel_username", "sentinel_password")
_REDACTED: Final = "***"

VerifyMode = Literal["required", "optional", "none"]


class RedisURLError(ValueError):
    """A Redis URL this project cannot use; the message names the URL's bad part."""


def redact_url(url: str) -> str:
    """``url`` with its password (in the user info, or a ``password=``, ``ssl_password=`` or
    ``sentinel_password=`` query parameter)
    replaced by ``***``: what every message and log line shows of a Redis URL. A text that
    does not parse as a URL comes back as ``"<unparseable URL>"``, never as itself."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:{_REDACTED}@{hosts}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(name in _SECRET_PARAMS for name, _ in pairs):
            query = urlencode(
                [(n, _REDACTED if n in _SECRET_PARAMS else v) for n, v in pairs], safe="/*"
            )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@dataclass(frozen=True, slots=True)
class TLSOptions:
    """Certificates for a TLS connection to Redis (and its Sentinels).

    ``ca_file``, ``cert_file``, ``key_file`` are paths (PEM); ``verify`` is how the server's
    certificate is checked; ``check_hostname`` None means "when ``verify`` is required"."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: VerifyMode = "required"
    check_hostname: bool | None = None

    def __post_init__(self) -> None:
        if self.verify not in get_args(VerifyMode):
            raise RedisURLError(
                f"TLS verify mode must be required, optional or none, not {self.verify!r}"
            )
        if (self.cert_file is None) != (self.key_file is None):
            raise RedisURLError("a TLS client certificate needs both its cert and key file")
        for what, path in (("CA", self.ca_file), ("cert", self.cert_file),
                           ("key", self.key_file)):  # fmt: skip
            if path is not None and not os.path.isfile(path):
                raise RedisURLError(f"TLS {what} file {path!r} does not exist")

    @property
    def is_default(self) -> bool:
        return self == TLSOptions()

    def redis_kwargs(self) -> dict[str, Any]:
        """These options as redis-py connection keywords (``ssl_*``)."""
        check = self.verify == "required" if self.check_hostname is None else self.check_hostname
        kwargs: dict[str, Any] = {"ssl_cert_reqs": self.verify, "ssl_check_hostname": check}
        for name, value in (("ssl_ca_certs", self.ca_file), ("ssl_certfile", self.cert_file),
                            ("ssl_keyfile", self.key_file)):  # fmt: skip
            if value is not None:
                kwargs[name] = value
        return kwargs


_BOOLS: Final = {"1": True, "true": True, "yes": True, "on": True,
                 "0": False, "false": False, "no": False, "off": False}  # fmt: skip
_TLS_PARAMS: Final = {
    "ssl_ca_certs": "ca_file",
    "ssl_certfile": "cert_file",
    "ssl_keyfile": "key_file",
    "ssl_cert_reqs": "verify",
    "ssl_check_hostname": "check_hostname",
}


def tls_options(url: str, defaults: TLSOptions | None = None) -> TLSOptions | None:
    """The TLS options for ``url``: ``defaults`` with the URL's ``ssl_*`` query parameters
    over them; None for a scheme without TLS. Raises :class:`RedisURLError` for TLS options
    on a plain URL, or a bad or missing option value."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    given = {name: value for name, value in query.items() if name in _TLS_PARAMS}
    if parts.scheme not in _TLS_SCHEMES:
        if given or (defaults is not None and not defaults.is_default):
            raise RedisURLError(
                f"{redact_url(url)}: TLS options need a rediss://, rediss+sentinel:// or "
                "rediss+cluster:// URL"
            )
        return None
    values: dict[str, Any] = {}
    for name, value in given.items():
        if name == "ssl_check_hostname":
            if value.lower() not in _BOOLS:
                raise RedisURLError(f"{redact_url(url)}: {name}={value!r} is not true or false")
            values[_TLS_PARAMS[name]] = _BOOLS[value.lower()]
        else:
            values[_TLS_PARAMS[name]] = value
    base = defaults or TLSOptions()
    try:
        return TLSOptions(
            ca_file=values.get("ca_file", base.ca_file),
            cert_file=values.get("cert_file", base.cert_file),
            key_file=values.get("key_file", base.key_file),
            verify=values.get("verify", base.verify),
            check_hostname=values.get("check_hostname", base.check_hostname),
        )
    except RedisURLError as exc:
        raise RedisURLError(f"{redact_url(url)}: {exc}") from None


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    service: str
    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = None
    #: TLS to the Sentinels and the master (``rediss+sentinel://``)
    tls: bool = False
    #: the Sentinels' own credentials (``?sentinel_username=&sentinel_password=``); None:
    #: the Sentinels are asked without authentication
    sentinel_username: str | None = None
    sentinel_password: str | None = None


def _host_ports(url: str, what: str) -> tuple[tuple[str, int], ...]:
    """The comma list of ``host:port`` of a Sentinel or cluster URL."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    found: list[tuple[str, int]] = []
    for hostport in netloc.split(","):
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise RedisURLError(f"{redact_url(url)}: {what} {hostport!r} is not host:port")
        found.append((host.strip("[]"), int(port)))
    return tuple(found)


@dataclass(frozen=True, slots=True)
class ClusterTarget:
    """What a ``redis+cluster://`` URL names: seed nodes (any reachable one is enough), the
    user and password every node is asked with, and whether TLS is on."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False


def parse_cluster(url: str) -> ClusterTarget:
    """The seed nodes and credentials of a ``redis+cluster://`` URL; raises
    :class:`RedisURLError` for a node that is not ``host:port`` or a database other than 0."""
    parts = urlsplit(url)
    nodes = _host_ports(url, "cluster node")
    bad_ports = [port for _, port in nodes if not 0 < port < 65536]
    if bad_ports:
        raise RedisURLError(f"{redact_url(url)}: port {bad_ports[0]} is out of range")
    # redis-py's cluster client takes no URL options: anything but the TLS ones would be
    # dropped unseen (?db=3 would run on database 0, ?password= unused)
    unknown = sorted(
        {n for n, _ in parse_qsl(parts.query, keep_blank_values=True)} - set(_TLS_PARAMS)
    )
    if unknown:
        raise RedisURLError(
            f"{redact_url(url)}: a cluster URL takes only the TLS parameters, not "
            f"{', '.join(unknown)} (the password goes before the @, or in its own setting)"
        )
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) > 1 or (segments and segments[0] != "0"):
        raise RedisURLError(
            f"{redact_url(url)}: a Redis Cluster has database 0 only (path /0 or none)"
        )
    return ClusterTarget(
        nodes=nodes,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=parts.scheme == "rediss+cluster",
    )


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
    try:
        return urlsplit(url).scheme in _CLUSTER_SCHEMES
    except ValueError:
        return False


def is_cluster(client: object) -> bool:
    """Whether ``client`` (from :func:`connect_async` or :func:`connect_sync`) talks to a
    Redis Cluster."""
    return isinstance(client, (acluster.RedisCluster, scluster.RedisCluster, _SyncCluster))


def parse_sentinel(url: str) -> SentinelTarget:
    parts = urlsplit(url)
    sentinels = list(_host_ports(url, "sentinel"))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise RedisURLError(f"{redact_url(url)}: the path must name the Sentinel service")
    db = 0
    if len(path) > 1:
        if not path[1].isdigit():
            raise RedisURLError(f"{redact_url(url)}: database {path[1]!r} is not a number")
        db = int(path[1])
    query = dict(parse_qsl(parts.query))
    sentinel_username = query.get("sentinel_username") or None
    sentinel_password = query.get("sentinel_password") or None
    return SentinelTarget(
        service=path[0],
        sentinels=tuple(sentinels),
        db=db,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=parts.scheme == "rediss+sentinel",
        sentinel_username=sentinel_username,
        sentinel_password=sentinel_password,
    )


def with_default_db(url: str, db: int) -> str:
    """``url`` naming database ``db`` when it names none (``redis://host`` ->
    ``redis://host/4``; ``unix:///s.sock`` -> ``unix:///s.sock?db=4``; a Sentinel URL's
    ``/service`` -> ``/service/4``); a URL that names one is returned as it is."""
    parts = urlsplit(url)
    if parts.scheme in _CLUSTER_SCHEMES:
        if db != 0:
            raise RedisURLError(f"{redact_url(url)}: a Redis Cluster has database 0 only")
        return url
    if parts.scheme == "unix":
        if any(name == "db" for name, _ in parse_qsl(parts.query, keep_blank_values=True)):
            return url
        query = f"{parts.query}&db={db}" if parts.query else f"db={db}"
        return urlunsplit(parts._replace(query=query))
    segments = [s for s in parts.path.split("/") if s]
    wanted = 1 if parts.scheme in _SENTINEL_SCHEMES else 0
    if len(segments) > wanted:
        return url
    return urlunsplit(parts._replace(path="/" + "/".join([*segments, str(db)])))


def check_url(url: str) -> str:
    """Raise :class:`RedisURLError` unless ``url`` has one of the accepted forms (and valid
    TLS query parameters, whose files exist)."""
    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket; the message holds no URL
        raise RedisURLError(f"{redact_url(url)}: {exc}") from None
    if scheme not in _SCHEMES:
        raise RedisURLError(
            f"{redact_url(url)}: scheme must be one of {', '.join(_SCHEMES)}, not {scheme!r}"
        )
    if scheme in _SENTINEL_SCHEMES:
        parse_sentinel(url)
    elif scheme in _CLUSTER_SCHEMES:
        parse_cluster(url)  # (refuses any parameter but the TLS ones)
        tls_options(url)
        return url
    elif any(name in _SENTINEL_PARAMS for name, _ in parse_qsl(urlsplit(url).query)):
        raise RedisURLError(f"{redact_url(url)}: sentinel_* parameters need a Sentinel URL")
    elif scheme != "unix" and not urlsplit(url).hostname:
        raise RedisURLError(f"{redact_url(url)}: no host")
    _check_db(url, scheme)
    tls_options(url)
    return url


def _check_db(url: str, scheme: str) -> None:
    """The database a URL names, if it names one, must be a number (redis-py reads
    ``redis://host/abc`` as database 0, silently)."""
    parts = urlsplit(url)
    if scheme not in _SENTINEL_SCHEMES:  # (parse_sentinel checks each Sentinel's port)
        try:
            parts.port  # noqa: B018 - a port that is not a number raises here
        except ValueError:
            raise RedisURLError(f"{redact_url(url)}: the port is not a number") from None
    if scheme == "unix":
        named = [v for n, v in parse_qsl(parts.query, keep_blank_values=True) if n == "db"]
    else:
        segments = [s for s in parts.path.split("/") if s]
        named = segments[1:2] if scheme in _SENTINEL_SCHEMES else segments[:1]
        if len(segments) > (2 if scheme in _SENTINEL_SCHEMES else 1):
            raise RedisURLError(f"{redact_url(url)}: a path of more than the database")
    if named and not named[0].isdigit():
        raise RedisURLError(f"{redact_url(url)}: database {named[0]!r} is not a number")


def _plain_url(url: str) -> str:
    """``url`` without the TLS query parameters (they are passed as options instead)."""
    parts = urlsplit(url)
    if not parts.query:
        return url
    kept = [(n, v) for n, v in parse_qsl(parts.query, keep_blank_values=True)
            if n not in _TLS_PARAMS]  # fmt: skip
    return urlunsplit(parts._replace(query=urlencode(kept)))


def _sentinel_args(
    url: str, extra: dict[str, Any], sentinel_password: str | None = None
) -> tuple[SentinelTarget, dict[str, Any] | None, dict[str, Any]]:
    """The target, the Sentinels' connection keywords and the master's, for ``url``.

    The master's user and password are never sent to the Sentinels (a Sentinel without a
    password refuses any AUTH, and one with ACL users has its own): they get the URL's
    ``sentinel_username``/``sentinel_password``, else ``sentinel_password``, else nothing."""
    target = parse_sentinel(url)
    tls_kwargs = {k: v for k, v in extra.items() if k.startswith("ssl_")}
    if target.tls:
        tls_kwargs["ssl"] = True
    password = target.password or extra.get("password")
    sentinel_kwargs = dict(tls_kwargs)
    secret = target.sentinel_password or sentinel_password
    if target.sentinel_username and not secret:
        raise RedisURLError(
            f"{redact_url(url)}: sentinel_username needs a Sentinel password (the URL's "
            "sentinel_password, or given separately)"
        )
    if secret:
        sentinel_kwargs["password"] = secret
        if target.sentinel_username:
            sentinel_kwargs["username"] = target.sentinel_username
    master = {"db": target.db, "username": target.username, "password": password, **tls_kwargs}
    return target, sentinel_kwargs or None, master


class ClusterUnavailableError(redis.exceptions.ConnectionError):
    """redis-py's cluster client found no way to the cluster or the slot (no node answering,
    a slot no node serves, a seed that is no cluster node): its
    :class:`~redis.exceptions.RedisClusterException` is no :class:`~redis.RedisError`, so
    it is raised as this connection error instead, which every caller already treats as
    Redis being away (the publisher queues and retries; a request gets 503)."""


def _unavailable(exc: Exception) -> ClusterUnavailableError:
    return ClusterUnavailableError(str(exc) or type(exc).__name__)


class _Cluster(acluster.RedisCluster):
    """redis-py's asyncio cluster client whose commands and pipelines raise
    :class:`ClusterUnavailableError` for its own unreachability errors."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except redis.exceptions.RedisClusterException as exc:
            raise _unavailable(exc) from exc

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> acluster.ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # (refused by redis-py)
        return _ClusterPipeline(self, transaction)  # type: ignore[abstract]


class _ClusterPipeline(acluster.ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        try:
            return await super().execute(raise_on_error, allow_redirections)
        except redis.exceptions.RedisClusterException as exc:
            raise _unavailable(exc) from exc


class _SyncCluster:
    """redis-py's blocking cluster client, made on first use: it asks the seeds for the slot
    map in its constructor, so a publisher started before its cluster answered raised there
    instead of queueing its events (the README's promise: "fresh publisher or back from an
    outage: events queued"). Until then it holds only the encoder a script is registered
    with; everything else goes to the client, made (or raising
    :class:`ClusterUnavailableError`) at that moment."""

    def __init__(self, make: Any, encoder: Any) -> None:
        self._make = make
        self._encoder = encoder
        self._client: scluster.RedisCluster | None = None
        self._lock = threading.Lock()

    def _real(self) -> scluster.RedisCluster:
        with self._lock:
            if self._client is None:
                try:
                    self._client = self._make()
                except redis.exceptions.RedisClusterException as exc:
                    raise _unavailable(exc) from exc
            return self._client

    def get_encoder(self) -> Any:
        return self._encoder

    def register_script(self, script: str) -> Script:
        return Script(self, script)  # type: ignore[arg-type]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> _SyncCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real(), name)


class _WaitingCluster(_Cluster):
    """A cluster client whose commands wait, up to ``pool_timeout`` seconds, for one of
    ``pool_size`` places instead of failing at once when a node's pool is full: redis-py 8.2
    has no blocking pool for a cluster (its ``MaxConnectionsError`` came at once, with an
    empty message: 1-7% of 1,000 streams opened at once got 503 on a cluster, none on a
    single Redis, whose blocking pool waits). Each node's pool holds ``pool_size`` more for
    pipelines and transactions, which do not pass here."""

    def __init__(self, *args: Any, pool_size: int, pool_timeout: float, **kwargs: Any) -> None:
        kwargs["max_connections"] = 2 * pool_size
        super().__init__(*args, **kwargs)
        self._places = asyncio.Semaphore(pool_size)
        self._pool_timeout = pool_timeout

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(self._pool_timeout):
                await self._places.acquire()
        except TimeoutError:
            raise redis.exceptions.MaxConnectionsError(
                f"no Redis connection free within {self._pool_timeout:g} s"
            ) from None
        try:
            return await super().execute_command(*args, **kwargs)
        finally:
            self._places.release()


def _cluster_args(url: str, extra: dict[str, Any]) -> tuple[ClusterTarget, dict[str, Any]]:
    """The target of a cluster URL and the keywords every node's connection gets."""
    target = parse_cluster(url)
    kwargs = {k: v for k, v in extra.items() if k.startswith("ssl_")}
    if target.tls:
        kwargs["ssl"] = True
    kwargs["username"] = target.username
    kwargs["password"] = target.password or extra.get("password")
    return target, kwargs


def _options(
    url: str, tls: TLSOptions | None, password: str | None, sentinel_password: str | None
) -> dict[str, Any]:
    if sentinel_password is not None and urlsplit(url).scheme not in _SENTINEL_SCHEMES:
        raise RedisURLError(f"{redact_url(url)}: a Sentinel password needs a Sentinel URL")
    options: dict[str, Any] = {}
    resolved = tls_options(url, tls)
    if resolved is not None:
        options.update(resolved.redis_kwargs())
    if password is not None and not urlsplit(url).password:
        options["password"] = password
    return options


def connect_async(
    url: str,
    *,
    pool_size: int | None = None,
    tls: TLSOptions | None = None,
    password: str | None = None,
    sentinel_password: str | None = None,
    **options: Any,
) -> aredis.Redis:
    """An asyncio client for ``url`` (not connected until first use).

    With ``pool_size``, at most that many connections are opened and a command waits up to
    ``pool_timeout`` seconds (default 5) for one, instead of redis-py's default of failing
    once 100 are in use (plain URLs; a Sentinel client keeps redis-py's pool). ``tls``:
    certificate options under the URL's own ``ssl_*`` parameters; ``password``: used when
    the URL carries none; ``sentinel_password``: the Sentinels' own (a Sentinel URL only),
    when the URL has no ``sentinel_password``. Raises :class:`RedisURLError` for a URL or
    TLS option it cannot use."""
    check_url(url)
    pool_timeout = options.pop("pool_timeout", 5.0)
    extra = _options(url, tls, password, sentinel_password)
    if urlsplit(url).scheme in _CLUSTER_SCHEMES:
        seeds, node_kwargs = _cluster_args(url, extra)
        nodes = [acluster.ClusterNode(host, port) for host, port in seeds.nodes]
        cluster: acluster.RedisCluster
        if pool_size is not None:
            cluster = _WaitingCluster(
                startup_nodes=nodes, pool_size=pool_size, pool_timeout=pool_timeout,
                **node_kwargs, **options,
            )  # fmt: skip
        else:
            cluster = _Cluster(startup_nodes=nodes, **node_kwargs, **options)
        # The commands this project sends are the same on both clients (the bus's verbs);
        # what differs (one node's pub/sub, INFO of one node) goes through is_cluster().
        return cast(aredis.Redis, cluster)
    if urlsplit(url).scheme in _SENTINEL_SCHEMES:
        target, sentinel_kwargs, master = _sentinel_args(url, extra, sentinel_password)
        sentinel = AsyncSentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)
        client: aredis.Redis = sentinel.master_for(target.service, **master, **options)
        return client
    plain = _plain_url(url)
    if pool_size is not None:
        pool = aredis.BlockingConnectionPool.from_url(
            plain, max_connections=pool_size, timeout=pool_timeout, **extra, **options
        )
        return aredis.Redis.from_pool(pool)  # the client owns (and closes) the pool
    return aredis.Redis.from_url(plain, **extra, **options)


def connect_node_async(
    url: str,
    host: str,
    port: int,
    *,
    tls: TLSOptions | None = None,
    password: str | None = None,
    sentinel_password: str | None = None,
    **options: Any,
) -> aredis.Redis:
    """A plain asyncio client of one node (``host``, ``port``) of the cluster ``url`` names,
    with its user, password and TLS: what a gateway subscribes on (SSUBSCRIBE is served by the
    node that holds the channel's slot; redis-py's cluster pub/sub polls every node instead).
    ``sentinel_password`` must be None (it is accepted so a caller can pass the same options
    as to :func:`connect_async`)."""
    check_url(url)
    if urlsplit(url).scheme not in _CLUSTER_SCHEMES:
        raise RedisURLError(f"{redact_url(url)}: not a Redis Cluster URL")
    _, kwargs = _cluster_args(url, _options(url, tls, password, sentinel_password))
    return aredis.Redis(host=host, port=port, **kwargs, **options)


def connect_sync(
    url: str,
    *,
    tls: TLSOptions | None = None,
    password: str | None = None,
    sentinel_password: str | None = None,
    **options: Any,
) -> redis.Redis:
    """A blocking client for ``url``; ``tls``, ``password`` and ``sentinel_password`` as for
    :func:`connect_async`."""
    check_url(url)
    extra = _options(url, tls, password, sentinel_password)
    if urlsplit(url).scheme in _CLUSTER_SCHEMES:
        seeds, node_kwargs = _cluster_args(url, extra)

        def make() -> scluster.RedisCluster:
            return scluster.RedisCluster(
                startup_nodes=[
                    scluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]
                    for host, port in seeds.nodes
                ],
                **node_kwargs,
                **options,
            )

        # what scripts are registered with before the client exists: the encoder of a
        # client of the same options (made, not connected)
        encoding = {k: v for k, v in options.items() if k in _ENCODING_OPTIONS}
        encoder = redis.Redis(**encoding).get_encoder()
        return cast(redis.Redis, _SyncCluster(make, encoder))
    if urlsplit(url).scheme in _SENTINEL_SCHEMES:
        target, sentinel_kwargs, master = _sentinel_args(url, extra, sentinel_password)
        sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)
        client: redis.Redis = sentinel.master_for(target.service, **master, **options)
        return client
    return redis.Redis.from_url(_plain_url(url), **extra, **options)
