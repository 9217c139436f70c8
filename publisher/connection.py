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

import os
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio as aredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

__all__ = [
    "RedisURLError",
    "SentinelTarget",
    "TLSOptions",
    "check_url",
    "connect_async",
    "connect_sync",
    "parse_sentinel",
    "redact_url",
    "tls_options",
    "with_default_db",
]

_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")
_SENTINEL_SCHEMES: Final = ("redis+sentinel", "rediss+sentinel")
_TLS_SCHEMES: Final = ("rediss", "rediss+sentinel")
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
                f"{redact_url(url)}: TLS options need a rediss:// or rediss+sentinel:// URL"
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


def parse_sentinel(url: str) -> SentinelTarget:
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    sentinels: list[tuple[str, int]] = []
    for hostport in netloc.split(","):
        host, _, port = hostport.rpartition(":")
        if not host or not port.isdigit():
            raise RedisURLError(f"{redact_url(url)}: sentinel {hostport!r} is not host:port")
        sentinels.append((host.strip("[]"), int(port)))
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
    if urlsplit(url).scheme in _SENTINEL_SCHEMES:
        target, sentinel_kwargs, master = _sentinel_args(url, extra, sentinel_password)
        sentinel = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)
        client: redis.Redis = sentinel.master_for(target.service, **master, **options)
        return client
    return redis.Redis.from_url(_plain_url(url), **extra, **options)
