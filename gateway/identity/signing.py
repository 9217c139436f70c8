"""Backend.AI keypair signatures, pure: the ``Authorization: BackendAI signMethod=HMAC-SHA256,
...`` header, built (clients) and taken apart (the gateway). No Redis, no HTTP framework: the
consumer client imports this alone; :mod:`gateway.identity.authenticate` checks a request
against the identity store with it.

String to sign, lines joined by ``\\n``::

    GET
    /stream/kernel/_/events?sessionId=s1&group=*     request target as sent
    2019-10-07T12:34:56+00:00                        raw Date (else X-BackendAI-Date) value
    host:127.0.0.1:8081                              Host header as sent
    content-type:application/octet-stream            media type, this when the request has none
    x-backendai-version:v4.20190615
    e3b0c442...b855                                  hex SHA-256 of the (empty) body

``k1 = HMAC(secret, YYYYMMDD)``, ``k2 = HMAC(k1, host)``, signature ``hex HMAC(k2, string)``,
all SHA-256. This literal reading of docs/design.md §4 reproduces its test vector as is.
One deliberate choice where the manager differs: it formats YYYYMMDD from the parsed date in
the offset it was sent with, we from the date converted to UTC (as docs/design.md §4 asks).
The official clients send UTC dates, so the two agree for them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Final

from gateway.errors import InvalidAuthParams

from .models import IdentityError, check_access_key

__all__ = [
    "DEFAULT_VERSION",
    "KNOWN_VERSION",
    "MAX_AUTH_HEADER",
    "MAX_HOST",
    "MAX_SKEW",
    "MAX_SMALL_HEADER",
    "is_known_version",
    "parse_authorization",
    "parse_date",
    "raw_target",
    "sign_request",
    "signature",
    "signed_headers",
    "string_to_sign",
]

DEFAULT_VERSION: Final = "v8.20240915"
KNOWN_VERSION: Final = re.compile(r"v([4-9])\.(\d{8})")
"""``v<major>.<YYYYMMDD>``, major 4 to 9; the date part must also be a real date."""
MAX_SKEW: Final = timedelta(minutes=15)
MAX_AUTH_HEADER: Final = 4096
MAX_SMALL_HEADER: Final = 256  # Date, version
MAX_HOST: Final = 1024
_EMPTY_BODY_HASH: Final = hashlib.sha256(b"").hexdigest()
_SIGN_METHOD: Final = "HMAC-SHA256"
_HEX64: Final = re.compile(r"[0-9a-fA-F]{64}")


# -- parsing ------------------------------------------------------------------------------------


def is_known_version(version: str) -> bool:
    match = KNOWN_VERSION.fullmatch(version)
    if match is None:
        return False
    try:
        datetime.strptime(match.group(2), "%Y%m%d")
    except ValueError:
        return False
    return True


def parse_date(value: str) -> datetime:
    """An aware UTC datetime from ISO 8601 (offset, ``Z`` or naive = UTC) or RFC 1123.

    Raises :class:`~gateway.errors.InvalidAuthParams` for anything else.
    """
    text = value.strip()
    if not text or len(text) > MAX_SMALL_HEADER or not text.isascii():
        raise InvalidAuthParams("Invalid date header", "use ISO 8601 or RFC 1123")
    try:
        if text[0].isdigit():
            parsed = datetime.fromisoformat(text)
        else:
            parsed = parsedate_to_datetime(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, TypeError, OverflowError, IndexError):
        raise InvalidAuthParams("Invalid date header", "use ISO 8601 or RFC 1123") from None


def parse_authorization(value: str) -> tuple[str, str]:
    """``(access_key, hex signature)`` from a ``BackendAI signMethod=..., credential=ak:sig`` value.

    Raises :class:`~gateway.errors.InvalidAuthParams` when it is oversized or malformed, or names a
    sign method other than HMAC-SHA256.
    """
    if len(value) > MAX_AUTH_HEADER:
        raise InvalidAuthParams(
            "Authorization header too large", f"at most {MAX_AUTH_HEADER} bytes"
        )
    scheme, _, rest = value.strip().partition(" ")
    if scheme != "BackendAI":
        raise InvalidAuthParams("Malformed Authorization header", "the scheme must be BackendAI")
    params: dict[str, str] = {}
    for piece in rest.split(","):
        name, eq, param = piece.partition("=")
        if not eq:
            raise InvalidAuthParams("Malformed Authorization header", "parameters are name=value")
        params[name.strip().lower()] = param.strip()
    method = params.get("signmethod")
    if method is None or "credential" not in params:
        raise InvalidAuthParams("Malformed Authorization header", "needs signMethod and credential")
    if method.upper() != _SIGN_METHOD:
        raise InvalidAuthParams("Unsupported signMethod", f"only {_SIGN_METHOD} is supported")
    access_key, colon, digest = params["credential"].rpartition(":")
    try:
        check_access_key(access_key)
    except IdentityError:
        raise InvalidAuthParams(
            "Malformed Authorization header", "credential is <access key>:<signature>"
        ) from None
    if not colon or not _HEX64.fullmatch(digest):
        raise InvalidAuthParams("Malformed Authorization header", "the signature is 64 hex digits")
    return access_key, digest.lower()


def raw_target(raw_path: bytes, query_string: bytes) -> str:
    """The request target as sent, from an ASGI scope's ``raw_path`` and ``query_string``."""
    target = raw_path.decode("latin-1")
    return f"{target}?{query_string.decode('latin-1')}" if query_string else target


def _media_type(content_type: str | None) -> str:
    media = (content_type or "").partition(";")[0].strip().lower()
    return media or "application/octet-stream"


# -- signing ------------------------------------------------------------------------------------


def string_to_sign(
    method: str, target: str, date: str, host: str, content_type: str | None, version: str
) -> str:
    return "\n".join(
        (
            method.upper(),
            target,
            date,
            f"host:{host}",
            f"content-type:{_media_type(content_type)}",
            f"x-backendai-version:{version}",
            _EMPTY_BODY_HASH,
        )
    )


def signature(secret_key: str, date: datetime, host: str, text: str) -> str:
    k1 = hmac.digest(secret_key.encode(), date.strftime("%Y%m%d").encode(), "sha256")
    k2 = hmac.digest(k1, host.encode(), "sha256")
    return hmac.new(k2, text.encode(), "sha256").hexdigest()


def sign_request(
    method: str,
    target: str,
    date: str,
    host: str,
    content_type: str | None,
    version: str,
    access_key: str,
    secret_key: str,
) -> str:
    """The ``Authorization`` header value for a request whose Date header is exactly ``date``."""
    text = string_to_sign(method, target, date, host, content_type, version)
    digest = signature(secret_key, parse_date(date), host, text)
    return f"BackendAI signMethod={_SIGN_METHOD}, credential={access_key}:{digest}"


def signed_headers(
    method: str,
    target: str,
    host: str,
    access_key: str,
    secret_key: str,
    *,
    now: datetime | None = None,
    version: str = DEFAULT_VERSION,
    content_type: str | None = None,
) -> dict[str, str]:
    """Date, X-BackendAI-Version and Authorization headers for one request (clients, tests)."""
    date = (now or datetime.now(UTC)).astimezone(UTC)
    date_value = format_datetime(date.replace(microsecond=0), usegmt=True)
    auth = sign_request(
        method, target, date_value, host, content_type, version, access_key, secret_key
    )
    return {"Date": date_value, "X-BackendAI-Version": version, "Authorization": auth}
