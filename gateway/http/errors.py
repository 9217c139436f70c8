"""Errors as Backend.AI shows them: ``application/problem+json`` with a problem type URL.

:func:`error_response` is the one mapper from an exception to a response, used by both doors
a request comes through (the fast stream path in :class:`gateway.http.app.TransportScope` and
Starlette's exception handlers), so the same error always gets the same answer:

=============================  ======  =====================================================
exception                      status  body ``type`` slug
=============================  ======  =====================================================
:class:`~gateway.errors.GatewayError` subclasses   per :data:`STATUS`, the class's slug
``RedisError``                 503     service-unavailable (``Retry-After: 2``)
Starlette ``HTTPException``    404/405 generic-not-found / method-not-allowed (else 400)
anything else                  500     internal-server-error (logged with its traceback)
=============================  ======  =====================================================

A refusal for capacity (429, 503) also says ``Connection: close``: a client that keeps its
connection for the retry would hold the very file descriptor the limit protects.
"""

from __future__ import annotations

import logging
from typing import Final

import msgspec
from redis.exceptions import RedisClusterException, RedisError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from gateway.errors import GatewayError, ProblemSlug

__all__ = ["PROBLEM_BASE", "STATUS", "error_response", "handle", "problem_response"]

log = logging.getLogger(__name__)

PROBLEM_BASE: Final = "https://api.backend.ai/probs/"

#: the HTTP status of each problem type
STATUS: Final[dict[ProblemSlug, int]] = {
    "invalid-api-params": 400,
    "invalid-auth-params": 400,
    "auth-failed": 401,
    "generic-forbidden": 403,
    "group-not-found": 404,
    "generic-not-found": 404,
    "method-not-allowed": 405,
    "rate-limit-exceeded": 429,
    "service-unavailable": 503,
    "internal-server-error": 500,
}


#: refusals for capacity, whose connection is closed after the answer
_CLOSES: Final = frozenset({429, 503})


class _Body(msgspec.Struct, omit_defaults=True):
    type: str
    title: str
    msg: str | None = None


_encoder: Final = msgspec.json.Encoder()


def problem_response(
    slug: ProblemSlug,
    title: str,
    msg: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = _encoder.encode(_Body(type=PROBLEM_BASE + slug, title=title, msg=msg))
    status = STATUS[slug]
    if status in _CLOSES:
        headers = {**(headers or {}), "Connection": "close"}
    return Response(
        body, status_code=status, headers=headers, media_type="application/problem+json"
    )


def error_response(exc: BaseException, path: str = "", *, log_unexpected: bool = True) -> Response:
    """The answer to ``exc`` raised while serving ``path`` (see the module's table); an
    unexpected error is logged with its traceback unless ``log_unexpected`` is false."""
    if isinstance(exc, GatewayError):
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return problem_response(exc.slug, exc.title, exc.msg, headers)
    if isinstance(exc, RedisError | RedisClusterException):
        log.warning("redis unavailable for %s: %s", path, exc)
        return problem_response(
            "service-unavailable",
            "The event store is unreachable; retry shortly",
            headers={"Retry-After": "2"},
        )
    if isinstance(exc, HTTPException):
        headers = dict(exc.headers or {})  # 405 carries Allow
        if exc.status_code == 404:
            return problem_response("generic-not-found", "Not found", path[:200], headers)
        if exc.status_code == 405:
            return problem_response("method-not-allowed", "Method not allowed", None, headers)
        return problem_response("invalid-api-params", "Bad request", None, headers)
    if log_unexpected:
        log.error("unhandled error on %s", path, exc_info=exc)
    return problem_response("internal-server-error", "Internal server error")


async def handle(request: Request, exc: Exception) -> Response:
    """Starlette's exception handler for every class the mapper knows. An unexpected error
    is not logged here: Starlette re-raises it after the response and uvicorn logs it."""
    return error_response(exc, request.url.path, log_unexpected=False)
