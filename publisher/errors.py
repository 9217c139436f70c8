"""The publisher's errors, and the three classes every Redis error falls into.

=============  ==========================================  ==================================
class          what Redis did                               what the publisher does
=============  ==========================================  ==================================
unreachable    no answer: connection refused, reset or      keep the events queued, in order;
               timed out, a frozen server                   retry with backoff; the call
                                                            returns ``None`` / ``[]``
refused        answered, and refused a write that may       same as unreachable
               succeed later: OOM (maxmemory +
               noeviction), READONLY (a replica, a
               failover), LOADING, BUSY, MASTERDOWN,
               MISCONF, NOSCRIPT, TRYAGAIN, NOREPLICAS,
               auth and ACL (NOAUTH, WRONGPASS, NOPERM:
               an operator can fix them)
rejected       answered, and no retry can succeed:          the events are discarded and
               WRONGTYPE (the history key is not a          counted (``rejected``); a call
               stream), a script error, any other error     still waiting raises
               reply                                        :class:`PublishRejected`
=============  ==========================================  ==================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal

import redis.exceptions as rex
from redis.sentinel import MasterNotFoundError

if TYPE_CHECKING:
    from .report import CloseReport

__all__ = [
    "ErrorClass",
    "PublishError",
    "PublishRejected",
    "PublisherClosed",
    "UndeliveredEvents",
    "classify",
    "explain",
    "outcome_unknown",
]

ErrorClass = Literal["unreachable", "refused", "rejected"]

#: error-reply codes of a write Redis may accept later; searched in the whole message, since
#: a script's error wraps the code of the command that failed inside it
_REFUSED_CODES: Final = (
    "OOM",
    "READONLY",
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "MISCONF",
    "NOSCRIPT",
    "TRYAGAIN",
    "NOREPLICAS",
    "CLUSTERDOWN",
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
)


class PublishError(RuntimeError):
    """Base of the publisher's own errors."""


class PublishRejected(PublishError):
    """Redis rejected the call's events with an error no retry can fix (the cause is
    chained); none of them was written."""


class PublisherClosed(PublishError):
    """``publish`` after ``close``/``aclose``."""


class UndeliveredEvents(PublishError):
    """Raised when a ``with`` block of a publisher ends and not every event handed to it is
    confirmed in Redis; :attr:`report` says which and why: ``report.undelivered`` were
    certainly not written, ``report.in_doubt`` may have been (see
    :class:`~publisher.writer.CloseReport` for what to do with each)."""

    def __init__(self, report: CloseReport) -> None:
        super().__init__(report.summary())
        self.report = report


def classify(exc: BaseException) -> ErrorClass:
    """The class of an error a write raised (see the module's table)."""
    if isinstance(exc, rex.AuthenticationError | rex.AuthorizationError | rex.BusyLoadingError):
        return "refused"
    if isinstance(
        exc,
        rex.ConnectionError
        | rex.TimeoutError
        | rex.InvalidResponse
        | OSError
        | TimeoutError
        # a cluster with no node answering, a slot no node serves, a slot mid-migration
        # that TRYAGAIN/ASK did not settle within the client's redirections ("TTL
        # exhausted"): the topology, not the events
        | rex.RedisClusterException
        | rex.ClusterError,
    ):
        if not isinstance(exc, rex.ClusterDownError):  # (a ResponseError: refused, below)
            return "unreachable"
    if isinstance(
        exc,
        rex.OutOfMemoryError
        | rex.ReadOnlyError
        | rex.NoScriptError
        | rex.NoPermissionError
        | rex.TryAgainError
        | rex.ClusterDownError,
    ):
        return "refused"
    if isinstance(exc, rex.ResponseError):
        words = str(exc).replace("-", " ").replace(":", " ").split()
        if any(code in words for code in _REFUSED_CODES):
            return "refused"
    return "rejected"


#: Redis' words when the history's last id leaves no id after it that XADD can make
_NO_NEXT_ID: Final = ("exhausted the last possible ID", "equal or smaller than the target")


def explain(exc: BaseException) -> str:
    """``exc`` as a publisher reports it: the error, and for the one rejection no retry and
    no publisher can fix, its cause and the way out."""
    text = f"{type(exc).__name__}: {exc}"
    if any(words in str(exc) for words in _NO_NEXT_ID):
        text += (
            " (the history's last id is past anything Redis' clock can follow: an entry was "
            "written with an id in the future. Nothing can be published until an admin starts "
            "a new history: gateway reset-history --yes)"
        )
    return text


def outcome_unknown(exc: BaseException) -> bool:
    """Whether an attempt that raised ``exc`` may have been applied all the same: an
    ``unreachable`` error after the request may have been sent (a timeout, a connection
    reset or closed under it; a frozen Redis runs what it received when it resumes). A
    connection that failed to open sent nothing; anything else unreachable is in doubt."""
    if classify(exc) != "unreachable":
        return False  # Redis answered (an error reply): the script did not run
    if isinstance(exc, MasterNotFoundError):
        return False  # the Sentinels named no master: nothing was sent
    if isinstance(exc, rex.ConnectionError | rex.TimeoutError) and "connecting to" in str(exc):
        return False  # redis-py's message for a connection that failed to open
    return not isinstance(exc, ConnectionRefusedError)
