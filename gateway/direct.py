"""Writing a stream's bytes straight to uvicorn's transport.

ASGI ``send`` costs a coroutine and three wrapper frames (two Starlette middlewares, then
uvicorn) per call, and the writer task behind it costs a wake-up per client per event. For a
hub that sends the same small frame to thousands of clients, that is most of the CPU. Under
uvicorn's httptools protocol the response is chunked, so after the headers have gone out
through ASGI the hub can write each client's coalesced queue as one chunk itself, exactly as
``send`` would frame it, and use ASGI ``send`` again only when the transport is full (where
``send`` waits for the drain) and for the final chunk.
"""

from __future__ import annotations

from typing import Any, Final, Protocol

__all__ = ["CYCLE_SCOPE_KEY", "TransportSink", "chunk", "uvicorn_cycle"]

#: where :class:`gateway.app.TransportScope` leaves uvicorn's request-response cycle
CYCLE_SCOPE_KEY: Final = "kev.uvicorn_cycle"


class _Transport(Protocol):
    def write(self, data: bytes) -> None: ...
    def is_closing(self) -> bool: ...
    def abort(self) -> None: ...
    def get_extra_info(self, name: str) -> Any: ...


def uvicorn_cycle(send: object) -> Any | None:
    """uvicorn's ``RequestResponseCycle`` behind an ASGI ``send``, or None for any other
    server (``send`` is then used for everything)."""
    cycle = getattr(send, "__self__", None)
    if all(hasattr(cycle, name) for name in ("transport", "flow", "chunked_encoding")):
        return cycle
    return None


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk, the framing uvicorn's ``send`` gives a body part."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class TransportSink:
    """The :class:`gateway.outbox.Sink` for one chunked uvicorn (httptools) response."""

    __slots__ = ("_cycle", "_flow", "write_chunk")

    def __init__(self, cycle: Any) -> None:
        if not cycle.chunked_encoding:  # decided when the headers went out
            raise ValueError("direct writes need a chunked response")
        self._cycle = cycle
        self._flow = cycle.flow
        transport: _Transport = cycle.transport
        #: the transport's own write: the hub frames each chunk, no call layer per write
        self.write_chunk = transport.write

    def paused(self) -> bool:
        # Two attribute loads, no call: this runs once per client per flush. A vanished
        # client (uvicorn's connection_lost sets ``disconnected``) counts as paused, so its
        # writer task, not a write to a dead transport, sees it out.
        return bool(self._flow.write_paused or self._cycle.disconnected)
