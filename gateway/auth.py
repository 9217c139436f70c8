"""Backend.AI keypair authentication: the ``Authorization: BackendAI signMethod=HMAC-SHA256, ...``
request signature, checked against the identity store.

String to sign, lines joined by ``\\n``::

    GET
    /stream/kernel/_/events?sessionId=s1&group=*     request target as sent
    2019-10-07T12:34:56+00:00                        raw Date (else X-BackendAI-Date) value
    host:127.0.0.1:8081                              Host header as sent
    content-type:application/octet-stream            media type, this when the request has none
    x-backendai-version:v4.20190615
    e3b0c442...b855                                  hex SHA-256 of the (empty) body

``k1 = HMAC(secret, YYYYMMDD)``, ``k2 = HMAC(k1, host)``, signature ``hex HMAC(k2, string)``,
all SHA-256. This literal reading of DESIGN.md section 4 reproduces its test vector as is. One
deliberate choice where the manager differs: it formats YYYYMMDD from the parsed date in the
offset it was sent with, we from the date converted to UTC (as DESIGN asks). The official
clients send UTC dates, so the two agree for them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Final

from gateway.errors import Problem
from gateway.identity import Identity, IdentityError, IdentityStore
from gateway.identity_model import check_access_key

__all__ = [
    "DEFAULT_VERSION",
    "KNOWN_VERSION",
    "MAX_AUTH_HEADER",
    "MAX_SKEW",
    "authenticate",
    "is_known_version",
    "parse_authorization",
    "parse_date",
    "raw_target",
    "sign_request",
    "signed_headers",
    "string_to_sign",
]

logger = logging.getLogger(__name__)

DEFAULT_VERSION: Final = "v8.20240915"
KNOWN_VERSION: Final = re.compile(r"v([4-9])\.(\d{8})")
"""``v<major>.<YYYYMMDD>``, major 4 to 9; the date part must also be a real date."""
MAX_SKEW: Final = timedelta(minutes=15)
MAX_AUTH_HEADER: Final = 4096
_MAX_SMALL_HEADER: Final = 256  # Date, version
_MAX_HOST: Final = 1024
_EMPTY_BODY_HASH: Final = hashlib.sha256(b"").hexdigest()
_SIGN_METHOD: Final = "HMAC-SHA256"
_HEX64: Final = re.compile(r"[0-9a-fA-F]{64}")


def _bad_params(title: str, msg: str | None = None) -> Problem:
    return Problem(400, "invalid-auth-params", title, msg)


def _auth_failed(title: str) -> Problem:
    return Problem(401, "auth-failed", title)


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

    Raises :class:`Problem` (400 invalid-auth-params) for anything else.
    """
    text = value.strip()
    if not text or len(text) > _MAX_SMALL_HEADER or not text.isascii():
        raise _bad_params("Invalid date header", "use ISO 8601 or RFC 1123")
    try:
        if text[0].isdigit():
            parsed = datetime.fromisoformat(text)
        else:
            parsed = parsedate_to_datetime(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, TypeError, OverflowError, IndexError):
        raise _bad_params("Invalid date header", "use ISO 8601 or RFC 1123") from None


def parse_authorization(value: str) -> tuple[str, str]:
    """``(access_key, hex signature)`` from a ``BackendAI signMethod=..., credential=ak:sig`` value.

    Raises :class:`Problem` (400 invalid-auth-params) when it is oversized or malformed, or names a
    sign method other than HMAC-SHA256.
    """
    if len(value) > MAX_AUTH_HEADER:
        raise _bad_params("Authorization header too large", f"at most {MAX_AUTH_HEADER} bytes")
    scheme, _, rest = value.strip().partition(" ")
    if scheme != "BackendAI":
        raise _bad_params("Malformed Authorization header", "the scheme must be BackendAI")
    params: dict[str, str] = {}
    for piece in rest.split(","):
        name, eq, param = piece.partition("=")
        if not eq:
            raise _bad_params("Malformed Authorization header", "parameters are name=value")
        params[name.strip().lower()] = param.strip()
    method = params.get("signmethod")
    if method is None or "credential" not in params:
        raise _bad_params("Malformed Authorization header", "needs signMethod and credential")
    if method.upper() != _SIGN_METHOD:
        raise _bad_params("Unsupported signMethod", f"only {_SIGN_METHOD} is supported")
    access_key, colon, signature = params["credential"].rpartition(":")
    try:
        check_access_key(access_key)
    except IdentityError:
        raise _bad_params(
            "Malformed Authorization header", "credential is <access key>:<signature>"
        ) from None
    if not colon or not _HEX64.fullmatch(signature):
        raise _bad_params("Malformed Authorization header", "the signature is 64 hex digits")
    return access_key, signature.lower()


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


def _signature(secret_key: str, date: datetime, host: str, text: str) -> str:
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
    signature = _signature(secret_key, parse_date(date), host, text)
    return f"BackendAI signMethod={_SIGN_METHOD}, credential={access_key}:{signature}"


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


# -- checking -----------------------------------------------------------------------------------


async def authenticate(
    method: str,
    raw_target: str,
    headers: Mapping[str, str],
    store: IdentityStore,
    *,
    now: datetime,
    max_skew: timedelta = MAX_SKEW,
) -> Identity:
    """Who signed this request, or :class:`Problem`: 400 invalid-auth-params, 401 auth-failed.

    ``headers`` has lower-case names (a Starlette ``Headers`` will do). The keypair's secret is
    checked before its state, so only a caller holding it learns that a keypair is inactive.
    """
    authorization = headers.get("authorization")
    if not authorization:
        raise _bad_params("Missing Authorization header")
    access_key, signature = parse_authorization(authorization)
    version = headers.get("x-backendai-version")
    if not version:
        raise _bad_params("Missing X-BackendAI-Version header")
    if len(version) > _MAX_SMALL_HEADER or not is_known_version(version):
        raise _bad_params("Unsupported X-BackendAI-Version", "expected v<4-9>.<YYYYMMDD>")
    raw_date = headers.get("date") or headers.get("x-backendai-date")
    if not raw_date:
        raise _bad_params("Missing Date or X-BackendAI-Date header")
    date = parse_date(raw_date)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if abs(now - date) > max_skew:
        raise _bad_params(
            "Too large clock skew",
            f"the request date must be within {max_skew} of the server's "
            f"{now.astimezone(UTC).isoformat(timespec='seconds')}",
        )
    host = headers.get("host")
    if not host or len(host) > _MAX_HOST:
        raise _bad_params("Missing or oversized Host header")

    keypair = await store.get_keypair(access_key)
    if keypair is None:
        logger.info("auth failed: unknown access key %r", access_key)
        raise _auth_failed("Access key not found")
    text = string_to_sign(method, raw_target, raw_date, host, headers.get("content-type"), version)
    expected = _signature(keypair.secret_key, date, host, text)
    if not hmac.compare_digest(expected, signature):
        logger.info("auth failed: signature mismatch for access key %r", access_key)
        raise _auth_failed("Signature mismatch")
    if not keypair.active:
        logger.info("auth failed: inactive access key %r", access_key)
        raise _auth_failed("Inactive keypair")
    user = await store.get_user(keypair.user_id)
    if user is None:
        logger.warning("auth failed: access key %r belongs to unknown user", access_key)
        raise _auth_failed("Keypair owner not found")
    return Identity(access_key, user.user_id, user.role, user.domain)
