"""Poll a condition until a deadline (never sleep a fixed time and hope)."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

__all__ = ["until", "wait_until"]


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Return once ``check()`` holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await anyio.sleep(0.02)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """:func:`until` for code without an event loop; returns the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start
