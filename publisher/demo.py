"""A lifecycle simulator: many sessions walking through Backend.AI kernel lifecycles at a set rate.

``kev-publish demo`` runs it as the demo publisher and as a load generator; the gateway's demo
registers the same identities (:func:`demo_identities`) so that its visibility rules (user,
domain admin, superadmin, monitor) have events of several owners, domains and groups to tell
apart.

Each session plans its whole lifecycle when it is created, from the same seeded
``random.Random`` that picks which session moves next, so a seed fixes the event sequence
(all but timestamps, UUIDs included), as a scheduler and agents of API v5 and later publish
it (``k:`` per kernel; a fifth of batch sessions have two)::

    session_enqueued -> session_scheduled -> k:preparing -> [k:pulling] -> k:creating
      -> k:started -> session_started -> [session_success | session_failure]
      -> k:terminating -> k:terminated(result, exit code) -> session_terminated

with ``session_cancelled`` instead of the rest after enqueued, preparing or pulling, and
``terminating``/``terminated(FAILURE)`` straight after creating when a kernel fails to start.
The v4 stream shows the main kernel's events and the session's enqueued, cancelled,
success and failure under their ``kernel_*`` names: the lifecycle manager 19.09 showed.
A finished session is replaced at once, so ``sessions`` lifecycles are always in flight.

Pacing: the loop wakes on a fixed tick and publishes, in one ``publish_many``, every event due
by then, ``floor(rate * elapsed) - published``. Counting from the start instead of per tick keeps
the long-run rate exact whatever the timer's jitter; a publisher that falls behind catches up in
batches of at most ``max_batch`` events, and a run bounded by time stops at its deadline even if
some due events were never sent (reported as ``behind``).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from .schema import EventName, KernelEvent, Result, SessionRef

__all__ = [
    "DEFAULT_TICK",
    "DemoGroup",
    "DemoIdentities",
    "DemoKeypair",
    "DemoStats",
    "EventSink",
    "LifecycleDemo",
    "LifecycleGenerator",
    "ProgressCallback",
    "demo_identities",
    "run_demo",
]

#: Seconds between two publishes. 25 ms: 40 round trips per second whatever the rate, and a
#: batch small enough that a live view looks continuous rather than bursty.
DEFAULT_TICK: Final = 0.025
DEFAULT_MAX_BATCH: Final = 10_000


@dataclass(frozen=True, slots=True)
class DemoKeypair:
    """One API keypair with what the gateway needs to know about its user.

    ``role`` ``"admin"`` is a domain admin (of ``domain``); ``groups`` are group names within
    ``domain``.
    """

    access_key: str
    secret_key: str
    user_id: str
    #: a role of the gateway's identity store (user, admin, superadmin, monitor)
    role: str
    domain: str
    groups: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DemoGroup:
    domain: str
    name: str


@dataclass(frozen=True, slots=True)
class DemoIdentities:
    keypairs: tuple[DemoKeypair, ...]
    groups: tuple[DemoGroup, ...]

    def owners(self) -> tuple[DemoKeypair, ...]:
        """The keypairs that own sessions: everyone but the read-only monitor."""
        return tuple(k for k in self.keypairs if k.role != "monitor")


# Publicly known demo credentials (the first two are Backend.AI's own development fixtures);
# never register them anywhere but a demo or a test.
# fmt: off
_IDENTITIES: Final = DemoIdentities(
    keypairs=(
        # access key, secret key, user id, role, domain, groups
        DemoKeypair("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                    "admin@lablup.com", "superadmin", "default", ("default",)),
        DemoKeypair("AKIADEFAULTADMIN0001", "DfltAdm1nDemoSecretKeyK7MDENG0bPxRfiCYEX",
                    "domain-admin@lablup.com", "admin", "default", ("default", "ml-team")),
        DemoKeypair("AKIARESEARCHADMIN001", "ResrchAdm1nDemoSecretKeyQ2nbVd8sLw0XmT4A",
                    "admin@research.example", "admin", "research", ("default", "vision")),
        DemoKeypair("AKIANABBDUSEREXAMPLE", "C8qnIo29EZvXkPK_MXcuAakYTy4NYrxwmCEyNPlf",
                    "user@lablup.com", "user", "default", ("default", "ml-team")),
        DemoKeypair("AKIARESEARCHUSER0001", "Alic3ResearchDemoSecretKey9fJk2LmQp7RtZw",
                    "alice@research.example", "user", "research", ("default", "vision")),
        DemoKeypair("AKIAMONITOR000000001", "M0nitorDemoSecretKeyReadOnly5hG7vN2xC8pL",
                    "monitor@lablup.com", "monitor", "default", ()),
    ),
    groups=(
        DemoGroup("default", "default"),
        DemoGroup("default", "ml-team"),
        DemoGroup("research", "default"),
        DemoGroup("research", "vision"),
    ),
)
# fmt: on


def demo_identities() -> DemoIdentities:
    """The keypairs and groups whose sessions the demo publishes; the gateway's demo registers
    the same ones: a superadmin, a domain admin per domain, a user per domain and a monitor."""
    return _IDENTITIES


# Users own most sessions; admins run a few of their own.
_OWNER_WEIGHT: Final[Mapping[str, int]] = {"user": 4, "admin": 1, "superadmin": 1, "monitor": 0}
_INTERACTIVE: Final = ("jupyter", "vscode", "notebook", "ssh", "tensorboard")
_BATCH: Final = ("train", "batch", "finetune", "eval")
_IMAGES: Final = (
    "cr.backend.ai/stable/python:3.11-ubuntu22.04",
    "cr.backend.ai/stable/python-pytorch:2.3-py311-cuda12.4",
    "cr.backend.ai/stable/python-tensorflow:2.16-py311-cuda12.3",
    "cr.backend.ai/multiarch/jupyter-notebook:7.2-py311",
)
# (reason, weight, probability that the result is FAILURE) for an interactive session's end.
_INTERACTIVE_END: Final = (
    ("user-requested", 55, 0.0),
    ("idle-timeout", 25, 0.0),
    ("self-terminated", 12, 0.5),
    ("force-terminated", 8, 1.0),
)

#: one event of a lifecycle: (name, reason, result, kernel index: 0 the main kernel)
_Step = tuple[EventName, str, Result | None, int]


def _plan(rng: random.Random, batch: bool) -> list[_Step]:
    """One session's whole lifecycle as a scheduler and agents of API v5 and later publish
    it, decided up front: session-level events, and the kernel events of each of its kernels
    (a fifth of batch sessions are two-kernel clusters). The v4 stream shows the main
    kernel's events and the session's enqueued/cancelled/success/failure as ``kernel_*``, the
    lifecycle the manager 19.09 showed (gateway.fanout.frames)."""
    kernels = range(2 if batch and rng.random() < 0.2 else 1)

    def each(name: EventName, reason: str = "", result: Result | None = None) -> list[_Step]:
        return [(name, reason, result, k) for k in kernels]

    steps: list[_Step] = [("session_enqueued", "", None, 0)]
    if rng.random() < 0.04:  # never scheduled
        reason = rng.choice(("pending-timeout", "user-requested"))
        return [*steps, ("session_cancelled", reason, None, 0)]
    steps += [("session_scheduled", "", None, 0), *each("kernel_preparing")]
    if rng.random() < 0.35:  # the image is not cached on the chosen agent
        steps += each("kernel_pulling", rng.choice(_IMAGES))
        if rng.random() < 0.06:
            reason = rng.choice(("failed-to-create", "user-requested"))
            return [*steps, ("session_cancelled", reason, None, 0)]
    steps += each("kernel_creating")
    if rng.random() < 0.04:
        return [
            *steps,
            *each("kernel_terminating", "failed-to-start"),
            *each("kernel_terminated", "failed-to-start", "FAILURE"),
            ("session_terminated", "failed-to-start", None, 0),
        ]
    steps += [*each("kernel_started"), ("session_started", "", None, 0)]
    if batch:
        ok = rng.random() < 0.85
        reason = "task-done" if ok else "task-failed"
        result: Result = "SUCCESS" if ok else "FAILURE"
        return [
            *steps,
            ("session_success" if ok else "session_failure", reason, None, 0),
            *each("kernel_terminating", reason),
            *each("kernel_terminated", reason, result),
            ("session_terminated", reason, None, 0),
        ]
    reason, _, failure_p = rng.choices(
        _INTERACTIVE_END, weights=[w for _, w, _ in _INTERACTIVE_END]
    )[0]
    result = "FAILURE" if rng.random() < failure_p else "SUCCESS"
    return [
        *steps,
        *each("kernel_terminating", reason),
        *each("kernel_terminated", reason, result),
        ("session_terminated", reason, None, 0),
    ]


def _exit_code(name: EventName, result: Result | None) -> int | None:
    """Where the manager knows one (API v5's ``exitCode``): 0 on success, 1 on failure."""
    if name == "session_success" or result == "SUCCESS":
        return 0
    if name == "session_failure" or result == "FAILURE":
        return 1
    return None


class _Session:
    __slots__ = ("kernels", "next", "ref", "steps")

    def __init__(self, ref: SessionRef, steps: list[_Step], rng: random.Random) -> None:
        self.ref = ref
        self.steps = steps
        self.next = 0
        count = 1 + max(k for *_, k in steps)
        #: the kernel ids: the session's main kernel first
        self.kernels = [ref.kernel_id] + [
            uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(count - 1)
        ]

    def advance(self) -> KernelEvent:
        name, reason, result, k = self.steps[self.next]
        self.next += 1
        return self.ref.event(
            name,
            reason=reason,
            result=result,
            exit_code=_exit_code(name, result),
            kernel_id=self.kernels[k],
            cluster_role="main" if k == 0 else "sub",
            cluster_idx=k,
        )

    @property
    def done(self) -> bool:
        return self.next >= len(self.steps)


class LifecycleGenerator:
    """Produces the interleaved events of ``sessions`` concurrent lifecycles; no I/O.

    Each event moves one session, picked at random, one step on; a session that reaches its
    end is replaced by a new one.
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        sessions: int,
        identities: DemoIdentities | None = None,
    ) -> None:
        if sessions < 1:
            raise ValueError(f"sessions must be at least 1, got {sessions}")
        self._rng = rng
        owners = (identities or demo_identities()).owners()
        if not owners:
            raise ValueError("identities: no keypair that may own sessions")
        self._owners = owners
        self._weights = [_OWNER_WEIGHT[k.role] for k in owners]
        self._serial = 0
        self._active = [self._new_session() for _ in range(sessions)]
        self.sessions_started = 0
        self.sessions_finished = 0
        self.by_name: dict[str, int] = {}

    @property
    def active_sessions(self) -> int:
        """Sessions that have published at least one event and not yet their last."""
        return self.sessions_started - self.sessions_finished

    def _new_session(self) -> _Session:
        rng = self._rng
        owner = rng.choices(self._owners, weights=self._weights)[0]
        batch = rng.random() < 0.3
        self._serial += 1
        kind = rng.choice(_BATCH if batch else _INTERACTIVE)
        ref = SessionRef(
            # A serial keeps names unique within a run; the random tail tells runs apart.
            session_id=f"{kind}-{self._serial:05d}-{rng.getrandbits(24):06x}",
            owner_access_key=owner.access_key,
            owner_user_id=owner.user_id,
            domain=owner.domain,
            group=rng.choice(owner.groups),
            session_uuid=uuid.UUID(int=rng.getrandbits(128), version=4),
            kernel_id=uuid.UUID(int=rng.getrandbits(128), version=4),
        )
        return _Session(ref, _plan(rng, batch), rng)

    def next_events(self, count: int) -> list[KernelEvent]:
        """The next ``count`` events, in the order they must be published."""
        events: list[KernelEvent] = []
        active = self._active
        for _ in range(count):
            index = self._rng.randrange(len(active))
            session = active[index]
            if session.next == 0:
                self.sessions_started += 1
            event = session.advance()
            events.append(event)
            self.by_name[event.name] = self.by_name.get(event.name, 0) + 1
            if session.done:
                self.sessions_finished += 1
                active[index] = self._new_session()
        return events


@dataclass(frozen=True, slots=True)
class DemoStats:
    """A snapshot of a run: during it (progress) or after it (totals)."""

    published: int
    elapsed: float
    active_sessions: int
    sessions_started: int
    sessions_finished: int
    #: Events that were due by the end of a time-bounded run but not published (the publisher
    #: could not keep up with the rate); 0 while running.
    behind: int = 0
    by_name: Mapping[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Events per second over the whole run so far."""
        return self.published / self.elapsed if self.elapsed > 0 else 0.0


class EventSink(Protocol):
    """What the simulator publishes through: :class:`publisher.AsyncPublisher`, or a fake."""

    async def publish_many(self, events: Sequence[KernelEvent], /) -> list[str]: ...


class ProgressCallback(Protocol):
    def __call__(self, stats: DemoStats, /) -> None: ...


class LifecycleDemo:
    """One paced run of the simulator; :meth:`run` at most once.

    Bounded by ``duration`` seconds and/or ``max_events``; with neither it runs until
    :meth:`stop` is called or its task is cancelled. ``stop()`` ends the run after the batch in
    flight, and :meth:`run` returns the totals; cancelling the task raises ``CancelledError``
    out of :meth:`run` as usual, and :meth:`stats` still tells what was published (a batch
    interrupted on the wire may or may not have reached Redis and is not counted).
    """

    def __init__(
        self,
        publisher: EventSink,
        *,
        rate: float,
        sessions: int,
        rng: random.Random,
        duration: float | None = None,
        max_events: int | None = None,
        tick: float = DEFAULT_TICK,
        max_batch: int = DEFAULT_MAX_BATCH,
        progress: ProgressCallback | None = None,
        progress_interval: float = 0.25,
        identities: DemoIdentities | None = None,
    ) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number of events per second, got {rate}")
        if duration is not None and not (duration >= 0 and math.isfinite(duration)):
            raise ValueError(f"duration must be a non-negative number of seconds, got {duration}")
        if max_events is not None and max_events < 0:
            raise ValueError(f"max_events must not be negative, got {max_events}")
        if not tick > 0:
            raise ValueError(f"tick must be a positive number of seconds, got {tick}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._publisher = publisher
        self._generator = LifecycleGenerator(rng, sessions=sessions, identities=identities)
        self._rate = rate
        self._duration = duration
        self._max_events = max_events
        self._tick = tick
        self._max_batch = max_batch
        self._progress = progress
        self._progress_interval = progress_interval
        self._published = 0
        self._behind = 0
        # The generator's counts as of the last batch Redis took: a batch that failed or was
        # cancelled on the wire does not show in the stats.
        self._sessions = (0, 0)
        self._by_name: dict[str, int] = {}
        self._started_at: float | None = None
        self._ended_at: float | None = None
        self._stopping = False

    def stop(self) -> None:
        """Ask the run to end after the batch in flight; safe from a signal handler."""
        self._stopping = True

    def stats(self) -> DemoStats:
        """What has been published so far (all of it, once :meth:`run` has returned)."""
        if self._started_at is None:
            elapsed = 0.0
        else:
            end = self._ended_at if self._ended_at is not None else _now()
            elapsed = end - self._started_at
        started, finished = self._sessions
        return DemoStats(
            published=self._published,
            elapsed=elapsed,
            active_sessions=started - finished,
            sessions_started=started,
            sessions_finished=finished,
            behind=self._behind,
            by_name=dict(self._by_name),
        )

    def _due(self, elapsed: float) -> int:
        horizon = elapsed if self._duration is None else min(elapsed, self._duration)
        # The epsilon keeps 0.1 s * 1000/s from flooring to 99 in binary floating point.
        due = math.floor(self._rate * horizon + 1e-9)
        return due if self._max_events is None else min(due, self._max_events)

    async def run(self) -> DemoStats:
        """Publish until the bound, :meth:`stop` or cancellation; returns the totals."""
        if self._started_at is not None:
            raise RuntimeError("a LifecycleDemo runs once; make a new one")
        start = self._started_at = _now()
        next_report = start + self._progress_interval
        try:
            while not self._stopping:
                elapsed = _now() - start
                due = self._due(elapsed)
                count = min(due - self._published, self._max_batch)
                if count > 0:
                    await self._publisher.publish_many(self._generator.next_events(count))
                    self._published += count
                    gen = self._generator
                    self._sessions = (gen.sessions_started, gen.sessions_finished)
                    self._by_name = dict(gen.by_name)
                if self._max_events is not None and self._published >= self._max_events:
                    break
                if self._duration is not None and elapsed >= self._duration:
                    self._behind = due - self._published
                    break
                now = _now()
                if self._progress is not None and now >= next_report:
                    self._progress(self.stats())
                    next_report = now + self._progress_interval
                if count == self._max_batch:
                    await asyncio.sleep(0)  # behind: catch up, but let other tasks run
                    continue
                # Sleep to the next tick boundary, or to the deadline if that comes first.
                wake = start + (math.floor((now - start) / self._tick) + 1) * self._tick
                if self._duration is not None:
                    wake = min(wake, start + self._duration)
                await asyncio.sleep(max(0.0, wake - now))
        finally:
            self._ended_at = _now()
        totals = self.stats()
        if self._progress is not None:
            self._progress(totals)
        return totals


def _now() -> float:
    # The clock asyncio's own timers use, readable outside the loop too (for a summary
    # printed after the loop is gone).
    return time.monotonic()


async def run_demo(
    publisher: EventSink,
    *,
    rate: float,
    sessions: int,
    rng: random.Random,
    duration: float | None = None,
    max_events: int | None = None,
    tick: float = DEFAULT_TICK,
    progress: ProgressCallback | None = None,
    progress_interval: float = 0.25,
) -> DemoStats:
    """Run the simulator once through ``publisher`` and return the totals
    (see :class:`LifecycleDemo`)."""
    demo = LifecycleDemo(
        publisher,
        rate=rate,
        sessions=sessions,
        rng=rng,
        duration=duration,
        max_events=max_events,
        tick=tick,
        progress=progress,
        progress_interval=progress_interval,
    )
    return await demo.run()
