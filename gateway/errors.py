"""Errors as Backend.AI shows them: ``application/problem+json`` with a problem type URL."""

from __future__ import annotations

from typing import Final, Literal

import msgspec
from starlette.responses import Response

__all__ = ["PROBLEM_BASE", "Problem", "ProblemSlug", "problem_response", "redis_unavailable"]

PROBLEM_BASE: Final = "https://api.backend.ai/probs/"

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


class _Body(msgspec.Struct, omit_defaults=True):
    type: str
    title: str
    msg: str | None = None


_encoder: Final = msgspec.json.Encoder()


class Problem(Exception):
    """An error the client is told about; never carries a secret in its text."""

    def __init__(
        self,
        status: int,
        slug: ProblemSlug,
        title: str,
        msg: str | None = None,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {slug}: {title}" + (f" ({msg})" if msg else ""))
        self.status = status
        self.slug = slug
        self.title = title
        self.msg = msg
        self.headers = headers or {}

    def response(self) -> Response:
        return problem_response(self.status, self.slug, self.title, self.msg, self.headers)


def problem_response(
    status: int,
    slug: ProblemSlug,
    title: str,
    msg: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = _encoder.encode(_Body(type=PROBLEM_BASE + slug, title=title, msg=msg))
    return Response(
        body, status_code=status, headers=headers, media_type="application/problem+json"
    )


def redis_unavailable() -> Response:
    """What a request that needed Redis gets while Redis is unreachable."""
    return problem_response(
        503,
        "service-unavailable",
        "The event store is unreachable; retry shortly",
        headers={"Retry-After": "2"},
    )
