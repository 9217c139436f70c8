"""What a test was doing when it hung: shortly before pytest-timeout fails a test, print the
stack of every thread and of every task of every running asyncio loop into the test's
captured output (it shows in the failure report, and CI prints that report).

pytest-timeout alone shows only the main thread's frame, which for an async test is the
event loop waiting in ``select``: not where the test is stuck. A registered plugin
(``pytest_plugins`` in tests/conftest.py); the margin is ``_MARGIN`` seconds before the
test's timeout (``timeout`` in pyproject.toml, or a ``timeout`` mark).
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import sys
import threading
from collections.abc import Iterator
from typing import Final

import pytest

_MARGIN: Final = 15.0


def _timeout_of(item: pytest.Item) -> float:
    mark = item.get_closest_marker("timeout")
    if mark is not None and mark.args:
        return float(mark.args[0])
    try:
        value = item.config.getini("timeout")  # pytest-timeout's setting
        return float(value) if value else 0.0
    except (TypeError, ValueError):
        return 0.0


def dump_everything(why: str) -> None:
    """Every thread's stack, then every task of every running event loop, to stderr."""
    err = sys.stderr
    print(f"\n===== {why}: threads =====", file=err, flush=True)
    try:
        faulthandler.dump_traceback(file=err, all_threads=True)
    except (ValueError, OSError) as exc:  # a stderr without a file descriptor
        print(f"(no thread stacks: {exc})", file=err)
    loops = [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop)]
    for loop in loops:
        if not loop.is_running():
            continue
        print(f"===== {why}: tasks of {loop!r} =====", file=err)
        for _ in range(3):  # the loop may change its task set under us: try again
            try:
                tasks = list(asyncio.all_tasks(loop))
                break
            except RuntimeError:
                continue
        else:
            tasks = []
        for task in tasks:
            print(f"--- task {task.get_name()}: awaiting", file=err)
            for line in _await_chain(task.get_coro()):
                print(f"    {line}", file=err)
    err.flush()


def _await_chain(coro: object) -> list[str]:
    """Where a suspended coroutine waits, through every coroutine it awaits (a task's own
    stack shows only its outermost frame)."""
    out: list[str] = []
    while coro is not None and len(out) < 60:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            out.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        else:
            out.append(repr(coro))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return out


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    timeout = _timeout_of(item)
    timer = None
    if timeout > 2 * _MARGIN:
        timer = threading.Timer(
            timeout - _MARGIN, dump_everything, args=(f"{item.nodeid} still running",)
        )
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
