"""Stopping an asyncio task for certain, with Redis calls in it.

On Python 3.11, ``asyncio.wait_for`` swallows a cancellation that arrives in the loop iteration
in which the awaited operation completes: it returns the result, and the task runs on with
the cancellation marked but never raised (CPython gh-86296, fixed in 3.12 by reimplementing
``wait_for`` on ``asyncio.timeout``). redis-py's asyncio client sends every command through
``wait_for`` whenever a socket timeout is set, and redis-py 8 sets one by default (5 s). So a
task cancelled while one of its Redis commands is being sent may not stop: measured with
redis-py 8.2 on Python 3.11, 1,794 of 2,000 cancels of a task publishing in a loop were
swallowed (none with redis-py 7.1, which set no timeout by default). A process that cancels
its background tasks on the way out then hangs in its shutdown.

:func:`cancel_and_wait` is how this project stops a task: it cancels again on every turn of
the event loop until the task has ended, the way anyio's level cancellation does (redis-py
copes with repeated cancels). A single re-cancel after a fixed delay is not enough: a task
that sends Redis commands in a tight loop meets the delay at the same phase of its loop each
time, and ran on for 1.5 s (8 s under load) of 50 ms re-cancels; cancelled on every turn, the
worst of 3,000 stops took 13 ms. Project code itself never calls ``asyncio.wait_for``
(``tests/unit/test_private_names.py`` fails on it); it uses ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

__all__ = ["GRACE", "cancel_and_wait"]

#: seconds during which a task that runs on is cancelled on every turn of the loop; after
#: that, every ``_RECANCEL`` seconds (a task that takes this long is not spinning on a send)
_SPIN: Final = 0.1
_RECANCEL: Final = 0.01


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # no "exception was never retrieved" warning


#: seconds a cancelled caller still waits for its tasks to end (:func:`cancel_and_wait`)
GRACE: Final = 1.0


async def cancel_and_wait(*tasks: asyncio.Future[Any], grace: float = GRACE) -> None:
    """Cancel every task and return once all have ended, cancelling again on every turn of
    the loop one that runs on after a swallowed cancellation (see the module docstring).
    What a task raised is retrieved and dropped (the task's owner logs its own failures).

    A cancellation of the caller itself (its owner stopping it, or a deadline around this
    call) is raised once every task has ended, or ``grace`` seconds after it came, whichever
    is first. The caller is typically an owner stopping its tasks in its ``finally`` while
    its own owner stops it with this function, which cancels it again on every turn: were
    that cancellation raised at once, the owner would end with its tasks still running,
    after which its own owner closes what they use (a redis-py client reconnects on its next
    command, a database pool is made again) and leaks it. Tasks cancelled on every turn end
    within milliseconds; ``grace`` bounds the wait for one that does not, so that a deadline
    around this call is late by at most that much (``tests/unit/test_tasks.py``). A task
    still running then is left running, cancelled no more; what it raises when it ends is
    retrieved. (Inside an anyio cancel scope, which cancels the caller again on every turn,
    the grace is spent cancelling on every turn: a busy second, only for a task that will
    not end.)"""
    loop = asyncio.get_running_loop()
    spin_until = loop.time() + _SPIN
    cancelled: asyncio.CancelledError | None = None
    give_up = 0.0
    while pending := [task for task in tasks if not task.done()]:
        if cancelled is not None and loop.time() >= give_up:
            for task in pending:  # left running: what it raises is retrieved when it ends
                task.add_done_callback(_retrieve)
            break
        for task in pending:
            task.cancel()
        try:
            await asyncio.sleep(0 if loop.time() < spin_until else _RECANCEL)
        except asyncio.CancelledError as exc:
            if cancelled is None:  # the caller's own: raised below
                cancelled, give_up = exc, loop.time() + grace
    for task in tasks:
        if task.done():
            _retrieve(task)
    if cancelled is not None:
        raise cancelled
