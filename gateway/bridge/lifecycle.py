"""Which of Backend.AI's bus messages are lifecycle steps the stream shows, and what each says:
the name the gateway publishes, the row that tells whose it is (a kernel's or a session's),
the reason and the exit code.

The argument tuples per generation (``../shared/BACKENDAI.md`` §1.3), checked against
Backend.AI's source:

====================================  =============================  =========================
event                                 22.09                          23.03 … 26.8
====================================  =============================  =========================
kernel_preparing, _pulling,           (K, creation_id, reason),      (K, S, reason,
_creating, _started                   from 22.09.5 with              creation_info); 23.03.0
                                      creation_info                  alone: (K, reason,
                                                                     creation_info)
kernel_cancelled                      as the above                   as the above; (K, S,
                                                                     reason) from 25.8
kernel_terminating, _terminated       (K, reason, exit_code)         (K, S, reason, exit_code)
                                                                     (23.03.0: 22.09's)
session_enqueued, _scheduled,         (S, creation_id, reason)       the same
_started, _cancelled
session_terminating, _terminated      (S, reason)                    the same
session_success, _failure             (S, reason, exit_code)         the same
scheduling (25.13+)                   —                              (S, creation_id,
                                                                     status_transition, reason)
====================================  =============================  =========================

Sources: ``src/ai/backend/common/events.py`` 22.09.0 and 23.09.0 (``KernelCreationEventArgs``
L251, ``KernelTerminationEventArgs``, ``SessionCreationEventArgs`` L330,
``SessionTerminationEventArgs``, ``SessionResultEventArgs``);
``src/ai/backend/common/events/event_types/{kernel,session}/broadcast.py`` 26.8.1
(``KernelCancelledBroadcastEvent``, ``SchedulingBroadcastEvent`` L203-245).

The names shown are the ones manager 23.09's ``/events/session`` subscribes
(``src/ai/backend/manager/api/events.py`` 23.09.0 L402-422) and manager 26.8.1's propagator
matches (``src/ai/backend/manager/events/hub/propagators/session.py`` 26.8.1 L136-162); a
``scheduling`` transition becomes ``session_<status lowered>``, ``RUNNING`` becoming
``session_started`` (same file, L233-242). Anything else on the bus (``session_preparing``
before 25.13, ``kernel_pull_progress``, ``bgtask_*``, ``do_*``, agent events) is not a step
the stream shows: :func:`interpret` returns None.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

from publisher.schema import EVENT_NAMES, EventName

from .wire import Malformed, Opaque, PickledEnum, SourceMessage, enum_value

__all__ = ["KERNEL_STEPS", "SCHEDULING_NAMES", "SESSION_STEPS", "Step", "interpret"]

#: kernel events, looked up by kernel id
KERNEL_STEPS: Final = frozenset(
    {
        "kernel_preparing",
        "kernel_pulling",
        "kernel_creating",
        "kernel_started",
        "kernel_cancelled",
        "kernel_terminating",
        "kernel_terminated",
    }
)
_KERNEL_CREATION: Final = frozenset(
    {"kernel_preparing", "kernel_pulling", "kernel_creating", "kernel_started", "kernel_cancelled"}
)
_KERNEL_TERMINATION: Final = frozenset({"kernel_terminating", "kernel_terminated"})
_SESSION_CREATION: Final = frozenset(
    {"session_enqueued", "session_scheduled", "session_started", "session_cancelled"}
)
_SESSION_TERMINATION: Final = frozenset({"session_terminating", "session_terminated"})
_SESSION_RESULT: Final = frozenset({"session_success", "session_failure"})
#: session events, looked up by session id
SESSION_STEPS: Final = _SESSION_CREATION | _SESSION_TERMINATION | _SESSION_RESULT

#: Backend.AI's SessionStatus values (``src/ai/backend/manager/data/session/types.py``
#: 26.8.1 L32) -> the event a ``scheduling`` transition to it becomes
SCHEDULING_NAMES: Final[dict[str, str]] = {
    status: "session_started" if status == "RUNNING" else f"session_{status.lower()}"
    for status in (
        "PENDING",
        "SCHEDULED",
        "PREPARING",
        "PULLING",
        "PREPARED",
        "CREATING",
        "RUNNING",
        "RESTARTING",
        "RUNNING_DEGRADED",
        "DEPRIORITIZING",
        "RESERVED",
        "PREEMPTED",
        "RESCHEDULING",
        "TERMINATING",
        "TERMINATED",
        "ERROR",
        "CANCELLED",
    )
}
assert set(SCHEDULING_NAMES.values()) <= EVENT_NAMES, "the schema lacks a session_* name"

_MAX_REASON: Final = 1024


@dataclass(frozen=True, slots=True)
class Step:
    """One lifecycle step, before the database says whose it is."""

    name: EventName
    #: which row to read: the kernel's (by kernel id) or the session's (by session id)
    lookup: Literal["kernel", "session"]
    key: uuid.UUID
    reason: str
    exit_code: int | None = None


def _uuid(value: Any, what: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str) and len(value) <= 64:
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise Malformed("uuid", f"{what} is not a UUID: {str(value)[:40]!r}")


def _reason(value: Any) -> str:
    if isinstance(value, PickledEnum):
        return enum_value(value)
    if value is None:
        return ""
    if isinstance(value, str):
        if len(value) > _MAX_REASON:
            raise Malformed("shape", f"a reason of {len(value)} characters")
        return value
    kind = f"ExtType {value.code}" if isinstance(value, Opaque) else type(value).__name__
    raise Malformed("shape", f"a reason that is a {kind}")


def _exit_code(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
        raise Malformed("shape", f"an exit code that is not a 32-bit integer: {value!r:.40}")
    return value


def _arity(message: SourceMessage, *allowed: int) -> None:
    if len(message.args) not in allowed:
        raise Malformed(
            "shape", f"{message.name} with {len(message.args)} arguments (expected {allowed})"
        )


def interpret(message: SourceMessage) -> Step | None:
    """The step ``message`` is, or None when it is none the stream shows (another event on
    the same bus). Raises :class:`Malformed` (``shape``, ``uuid``, ``pickle``) when the name
    is a lifecycle event's but its arguments are not that event's."""
    name, args = message.name, message.args
    if name in _KERNEL_CREATION:
        _arity(message, 3, 4)
        kernel = _uuid(args[0], "kernel id")
        # 23.03.1+: (K, S, reason, creation_info), from 25.8 a cancelled one (K, S, reason);
        # 22.09.5: (K, creation_id, reason, creation_info); 22.09.0: (K, creation_id,
        # reason); 23.03.0 alone: (K, reason, creation_info)
        if len(args) == 3 and isinstance(args[2], dict):
            return Step(cast(EventName, name), "kernel", kernel, _reason(args[1]))
        return Step(cast(EventName, name), "kernel", kernel, _reason(args[2]))
    if name in _KERNEL_TERMINATION:
        _arity(message, 3, 4)
        kernel = _uuid(args[0], "kernel id")
        if len(args) == 4:  # 23.03+: (K, S, reason, exit_code)
            _uuid(args[1], "session id")
            reason, code = args[2], args[3]
        else:  # 22.09: (K, reason, exit_code)
            reason, code = args[1], args[2]
        return Step(cast(EventName, name), "kernel", kernel, _reason(reason), _exit_code(code))
    if name in _SESSION_CREATION:
        _arity(message, 3)
        return Step(
            cast(EventName, name), "session", _uuid(args[0], "session id"), _reason(args[2])
        )
    if name in _SESSION_TERMINATION:
        _arity(message, 2)
        return Step(
            cast(EventName, name), "session", _uuid(args[0], "session id"), _reason(args[1])
        )
    if name in _SESSION_RESULT:
        _arity(message, 3)
        session = _uuid(args[0], "session id")
        return Step(
            cast(EventName, name), "session", session, _reason(args[1]), _exit_code(args[2])
        )
    if name == "scheduling":
        _arity(message, 4)
        session = _uuid(args[0], "session id")
        status = args[2]
        if not isinstance(status, str) or status not in SCHEDULING_NAMES:
            raise Malformed("shape", f"a scheduling transition to {str(status)[:40]!r}")
        return Step(cast(EventName, SCHEDULING_NAMES[status]), "session", session, _reason(args[3]))
    return None
