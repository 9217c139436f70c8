"""Checking a request's Backend.AI keypair signature against the identity store."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

from gateway.errors import AuthFailed, InvalidAuthParams

from .models import Identity, Keypair
from .signing import (
    MAX_HOST,
    MAX_SKEW,
    MAX_SMALL_HEADER,
    is_known_version,
    parse_authorization,
    parse_date,
    signature,
    string_to_sign,
)
from .store import IdentityStore

__all__ = ["authenticate_keypair", "authenticate_signature"]

logger = logging.getLogger(__name__)

#: ``(access key, Authorization header) -> whether a stale date is allowed for it``
StaleOk = Callable[[str, str], Awaitable[bool]]

#: what an unknown access key's signature is computed with (40 characters, as a secret)
_DECOY_SECRET: Final = "decoy-secret-never-matches-0000000000000"


async def authenticate_signature(
    method: str,
    raw_target: str,
    headers: Mapping[str, str],
    store: IdentityStore,
    *,
    now: datetime,
    max_skew: timedelta = MAX_SKEW,
) -> Identity:
    """Who signed this request (see :func:`authenticate_keypair`)."""
    keypair_and_identity = await authenticate_keypair(
        method, raw_target, headers, store, now=now, max_skew=max_skew
    )
    return keypair_and_identity[1]


async def authenticate_keypair(
    method: str,
    raw_target: str,
    headers: Mapping[str, str],
    store: IdentityStore,
    *,
    now: datetime,
    max_skew: timedelta = MAX_SKEW,
    stale_ok: StaleOk | None = None,
) -> tuple[Keypair, Identity]:
    """Who signed this request, with the keypair it was signed with (an open stream
    remembers which secret opened it: a new secret ends it).

    Raises :class:`~gateway.errors.InvalidAuthParams` for missing or malformed signature
    headers or a date off by more than ``max_skew``, and :class:`~gateway.errors.AuthFailed`
    for an unknown, inactive or ownerless key or a wrong signature;
    :class:`~gateway.identity.store.IdentityStoreLost` when Redis lost the identity store.
    ``stale_ok(access_key, authorization)``: asked only for a date past ``max_skew``; True
    lets that one request through the date check (the signature is checked all the same):
    an SDK's reconnect re-sends its stream request as first signed (gateway.replica.handoff).

    ``headers`` has lower-case names (a Starlette ``Headers`` will do). The keypair's secret is
    checked before its state, so only a caller holding it learns that a keypair is inactive.
    """
    authorization = headers.get("authorization")
    if not authorization:
        raise InvalidAuthParams("Missing Authorization header")
    access_key, sent = parse_authorization(authorization)
    version = headers.get("x-backendai-version")
    if not version:
        raise InvalidAuthParams("Missing X-BackendAI-Version header")
    if len(version) > MAX_SMALL_HEADER or not is_known_version(version):
        raise InvalidAuthParams("Unsupported X-BackendAI-Version", "expected v<4-9>.<YYYYMMDD>")
    raw_date = headers.get("date") or headers.get("x-backendai-date")
    if not raw_date:
        raise InvalidAuthParams("Missing Date or X-BackendAI-Date header")
    date = parse_date(raw_date)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    host = headers.get("host")
    if not host or len(host) > MAX_HOST:
        raise InvalidAuthParams("Missing or oversized Host header")

    keypair = await store.get_keypair(access_key)
    # An unknown key is answered as a wrong signature, after the same HMAC: the answer and
    # its time tell no one which access keys exist (the log still says which it was).
    text = string_to_sign(method, raw_target, raw_date, host, headers.get("content-type"), version)
    expected = signature(keypair.secret_key if keypair else _DECOY_SECRET, date, host, text)
    if not hmac.compare_digest(expected, sent) or keypair is None:
        if keypair is None:
            logger.info("auth failed: unknown access key %r", access_key)
        else:
            logger.info("auth failed: signature mismatch for access key %r", access_key)
        raise AuthFailed("Signature mismatch")
    # The date after the signature: a stale request's one allowance (its handoff record,
    # claimed by stale_ok) is spent only by a request signed with the key's secret, never by
    # a copy with another target or a wrong signature (the review: such a copy destroyed it).
    if abs(now - date) > max_skew and not (
        stale_ok is not None and await stale_ok(access_key, authorization)
    ):
        raise InvalidAuthParams(
            "Too large clock skew",
            f"the request date must be within {max_skew} of the server's "
            f"{now.astimezone(UTC).isoformat(timespec='seconds')}",
        )
    if not keypair.active:
        logger.info("auth failed: inactive access key %r", access_key)
        raise AuthFailed("Inactive keypair")
    user = await store.get_user(keypair.user_id)
    if user is None:
        logger.warning("auth failed: access key %r belongs to unknown user", access_key)
        raise AuthFailed("Keypair owner not found")
    return keypair, Identity(access_key, user.user_id, user.role, user.domain)
