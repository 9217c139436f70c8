"""Hand-written fakes for the unit tests: a clock the test moves, the direct-write sink, the
transport behind it, and an ASGI ``send`` that records (and can hold) what it is given."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

__all__ = ["FakeClock", "FakeDirect", "FakeSink", "FakeTransport", "RecordingSend"]


class FakeClock:
    """``time.monotonic`` as the test sets it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeSink:
    """The direct way out: checks each write is one well-formed chunk, keeps its data."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.blocked = False

    def write_chunk(self, framed: bytes) -> None:
        size, _, rest = framed.partition(b"\r\n")
        assert int(size, 16) == len(rest) - 2 and rest.endswith(b"\r\n")
        self.writes.append(rest[:-2])


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str) -> None:
        return None


class FakeDirect:
    """A server's direct path as :meth:`Connection.attach` sees it: only its transport (and
    never chunked: the stream writes through ``send``)."""

    def __init__(self) -> None:
        self.transport = FakeTransport()

    def chunked(self) -> bool:
        return False

    blocked = True

    def write_chunk(self, framed: bytes) -> None:
        raise AssertionError("never chunked: nothing is written directly")


class RecordingSend:
    """An ASGI ``send``: records every message; while :attr:`gate` is clear, each call
    waits for it (a client that stopped reading)."""

    def __init__(self) -> None:
        self.messages: list[MutableMapping[str, Any]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        await self.gate.wait()
        self.messages.append(message)

    @property
    def body(self) -> bytes:
        """Every body part sent so far, joined."""
        return b"".join(m.get("body", b"") for m in self.messages)

    @property
    def ended(self) -> bool:
        """The last message closed the response (``more_body`` false)."""
        return bool(self.messages) and not self.messages[-1].get("more_body", False)
