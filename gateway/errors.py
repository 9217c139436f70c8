"""The errors a caller is told about, as domain types: no HTTP here.

Each class carries the Backend.AI problem type (``slug``, the last part of
``https://api.backend.ai/probs/<slug>``) that the manager uses for it; the HTTP edge
(:mod:`gateway.http.errors`) is the one place that maps a class to a status code and an
``application/problem+json`` body, for every door a request can come through.

Messages never carry a secret; they may name the bad value (cut short).
"""

from __future__ import annotations

from typing import ClassVar, Literal

__all__ = [
    "AuthFailed",
    "Forbidden",
    "GatewayError",
    "GroupNotFound",
    "InvalidAuthParams",
    "InvalidParams",
    "ProblemSlug",
    "RateLimited",
    "Unavailable",
]

ProblemSlug = Literal[
    "invalid-api-params",
    "invalid-auth-params",
    "auth-failed",
    "generic-forbidden",
    "group-not-found",
    "generic-not-found",
    "method-not-allowed",
    "rate-limit-exceeded",
    "service-unavailable",
    "internal-server-error",
]


class GatewayError(Exception):
    """An error the caller is told about: ``title`` (short, fixed), ``msg`` (what was wrong),
    and ``retry_after`` (seconds) where trying again later helps."""

    slug: ClassVar[ProblemSlug] = "internal-server-error"

    def __init__(self, title: str, msg: str | None = None, *, retry_after: int | None = None):
        super().__init__(f"{self.slug}: {title}" + (f" ({msg})" if msg else ""))
        self.title = title
        self.msg = msg
        self.retry_after = retry_after


class InvalidParams(GatewayError):
    """A query parameter, header value or body field is missing, unknown or malformed."""

    slug = "invalid-api-params"


class InvalidAuthParams(GatewayError):
    """The signature headers are missing or malformed, or the date is off the clock."""

    slug = "invalid-auth-params"


class AuthFailed(GatewayError):
    """Unknown or inactive key, wrong signature or secret, no such browser session."""

    slug = "auth-failed"


class Forbidden(GatewayError):
    """The caller's role does not allow what it asked for."""

    slug = "generic-forbidden"


class GroupNotFound(GatewayError):
    slug = "group-not-found"


class RateLimited(GatewayError):
    """A per-key limit is reached; ``retry_after`` says when to try again."""

    slug = "rate-limit-exceeded"


class Unavailable(GatewayError):
    """This replica cannot serve the request now (shutting down, at its limit, Redis away)."""

    slug = "service-unavailable"
