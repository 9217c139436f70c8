"""The lifespan's background tasks are supervised: a crash is logged, counted and restarted,
the replica is not ready meanwhile, and one that stays unable to deliver fails liveness."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest

from gateway.replica.lifespan import EXIT_SIGNALS, _chain_exit_signals, _supervise
from gateway.replica.state import GatewayState
from gateway.settings import Settings


class _Subscriber:
    ready = True


def _state(**settings: Any) -> GatewayState:
    return GatewayState(
        settings=Settings.load({}, **settings),
        redis=None,  # type: ignore[arg-type]  # nothing here reaches Redis
        keys=None,  # type: ignore[arg-type]
        bus=None,  # type: ignore[arg-type]
        hub=None,  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
        subscriber=_Subscriber(),  # type: ignore[arg-type]
    )


@pytest.mark.anyio
async def test_a_crashing_task_is_restarted_counted_and_marks_the_replica_not_ready(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = _state()
    runs = 0
    down_seen: list[bool] = []

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise RuntimeError(f"crash {runs}")
        down_seen.append(bool(state.tasks_down))
        await asyncio.sleep(3600)

    task = asyncio.ensure_future(_supervise(state, "flaky", flaky))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if runs == 1 and state.tasks_down:
            assert not state.ready  # down between the crash and the restart
        if runs >= 3:
            break
    assert runs == 3 and state.task_restarts["flaky"] == 2
    assert down_seen == [False] and state.ready
    assert sum("background task flaky died" in r.message for r in caplog.records) == 2
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


class _Draining:
    """What the signal chain uses of the state: the drain (it records the order of things)."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.hub: list[object] = []

    async def drain(self) -> bool:
        self.events.append("drain begins")
        await asyncio.sleep(0.05)
        self.events.append("drain ends")
        return True


@pytest.mark.anyio
@pytest.mark.parametrize("sig", EXIT_SIGNALS)
async def test_an_exit_signal_drains_then_reaches_the_handler_before(sig: int) -> None:
    """The lifespan's signal chain (what replaced sse-starlette's private exit hook): the
    streams are drained first, then the server's own handler (uvicorn's) gets the signal; a
    second signal reaches it at once; the undo puts that handler back."""
    events: list[str] = []
    before = signal.signal(sig, lambda number, frame: events.append(f"server got {number}"))
    try:
        server_handler = signal.getsignal(sig)
        undo = _chain_exit_signals(_Draining(events))  # type: ignore[arg-type]
        assert signal.getsignal(sig) is not server_handler
        signal.raise_signal(sig)
        await asyncio.sleep(0.2)
        assert events == ["drain begins", "drain ends", f"server got {sig}"]
        signal.raise_signal(sig)  # once draining began, each signal goes straight through
        assert events[-1] == f"server got {sig}" and len(events) == 4
        undo()
        assert signal.getsignal(sig) is server_handler
    finally:
        signal.signal(sig, before)


@pytest.mark.anyio
async def test_a_second_signal_during_the_drain_does_not_wait_for_it() -> None:
    events: list[str] = []
    sig = signal.SIGTERM
    before = signal.signal(sig, lambda number, frame: events.append("server"))
    try:
        undo = _chain_exit_signals(_Draining(events))  # type: ignore[arg-type]
        signal.raise_signal(sig)
        await asyncio.sleep(0.01)  # the drain has begun
        signal.raise_signal(sig)
        assert events == ["drain begins", "server"]
        await asyncio.sleep(0.1)
        undo()
    finally:
        signal.signal(sig, before)


def test_liveness_fails_only_after_the_timeout_unable_to_deliver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = _state(liveness_timeout=10)
    now = [1000.0]
    monkeypatch.setattr("gateway.replica.state.time.monotonic", lambda: now[0])
    assert state.unable_to_deliver_for() == 0.0
    _Subscriber.ready = False
    try:
        assert state.unable_to_deliver_for() == 0.0  # the clock starts now
        now[0] += 11
        assert state.unable_to_deliver_for() == 11.0
        state.accepting = False  # draining is not "unable to deliver"
        assert state.unable_to_deliver_for() == 0.0
    finally:
        _Subscriber.ready = True


@pytest.mark.anyio
async def test_the_drain_does_not_pass_on_a_signal_the_server_already_had() -> None:
    """SIGINT from the terminal, then SIGTERM from the supervisor (what the demo's Ctrl-C
    does): the server gets one signal, not the SIGINT again once the drain ends, which it
    would take as a second Ctrl-C (force exit: the lifespan cancelled, tracebacks)."""
    events: list[str] = []
    handlers = {
        sig: signal.signal(sig, lambda number, frame: events.append(f"server got {number}"))
        for sig in EXIT_SIGNALS
    }
    try:
        undo = _chain_exit_signals(_Draining(events))  # type: ignore[arg-type]
        signal.raise_signal(signal.SIGINT)
        await asyncio.sleep(0.01)
        signal.raise_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)  # the drain ends
        assert events == ["drain begins", f"server got {signal.SIGTERM}", "drain ends"]
        undo()
    finally:
        for sig, before in handlers.items():
            signal.signal(sig, before)
