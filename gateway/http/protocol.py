"""uvicorn's httptools protocol with the limits it lacks: a bounded request head, a deadline
for it, and a cap on the connections one process serves.

Stock, uvicorn's httptools protocol reads a request head of any size (a 64 MB header to
``/health`` was answered 200 while the replica grew by 78 MB), starts no timer before the
first request of a connection, and its keep-alive timer is cancelled by the first byte of
the next request, so a connection that sends a partial head stays open forever. Its h11
protocol honours ``h11_max_incomplete_event_size``, but h11 is not what the direct writes of
:mod:`gateway.fanout.connection` rely on. This protocol takes the limits from the uvicorn
config :func:`gateway.http.server.uvicorn_options` builds, so every worker process (which gets
the config, pickled) applies the same ones:

* ``h11_max_incomplete_event_size``: bytes of one request head (request line and headers)
  read at most. Beyond it: 431, and the connection closes. Counted as bytes arrive, so a
  connection holds at most this much plus one socket read (256 KiB) of an unfinished head.
* ``timeout_keep_alive``: seconds a connection may go without a complete request head,
  counted from its opening or from the end of its previous response, and again for the
  request's body from the end of its head (a login body that never completes was never
  timed out). Bytes arriving do not restart it. Then the connection closes, after a 408 if a
  head or body had begun.
* ``limit_concurrency``: connections open at once in this process. A request on a
  connection beyond it gets 503 with ``Retry-After`` and ``Connection: close``
  (problem+json, as every other error of the gateway).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import msgspec
from starlette.types import Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.errors import Unavailable

from .errors import error_response

__all__ = ["LimitedHttpToolsProtocol"]

log = logging.getLogger(__name__)

#: seconds a refused connection keeps its socket half-open, not reading, so the client can
#: read the refusal before the close (closing with unread input sends a reset at once)
_LINGER: Final = 1.0


def _refusal(status: int, reason: str, title: str) -> bytes:
    body = msgspec.json.encode(
        {"type": "https://api.backend.ai/probs/invalid-api-params", "title": title}
    )
    return b"".join(
        [
            f"HTTP/1.1 {status} {reason}\r\n".encode(),
            b"content-type: application/problem+json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


_last_cap_log = float("-inf")

_TOO_LARGE: Final = _refusal(431, "Request Header Fields Too Large", "Request head too large")
_TIMEOUT: Final = _refusal(408, "Request Timeout", "Request head not received in time")


async def _over_capacity(scope: Scope, receive: Receive, send: Send) -> None:
    """The answer on a connection beyond ``limit_concurrency``."""
    response = error_response(Unavailable("This replica is at its connection limit", retry_after=1))
    response.headers["connection"] = "close"
    await response(scope, receive, send)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with the head size, head deadline and connection cap of the
    module docstring (one instance per connection, as its base)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._max_head = config.h11_max_incomplete_event_size or 16 * 1024
        self._head_timeout = float(config.timeout_keep_alive)
        self._max_connections = config.limit_concurrency
        # uvicorn's own check (connections or tasks >= limit) answers plain text without
        # Retry-After, one connection early: on_headers_complete below replaces it.
        self.limit_concurrency = None
        # Reading a head: from the opening and from the end of each request's body, until
        # the next head is complete. Bytes read meanwhile count towards the head.
        self._in_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        # A request's body is held to the same deadline, counted from the end of its head:
        # a body that never completes (slowloris past the head) is closed like a slow head.
        self._in_body = False
        self._refused = False

    # -- the head deadline ---------------------------------------------------------------------

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self._head_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if (self._in_head and self._head_bytes) or self._in_body:
            self._refuse(_TIMEOUT)
        else:  # idle: nothing to answer
            self.transport.close()

    def _refuse(self, response: bytes) -> None:
        """Answer ``response`` and close, without reading any more of the request."""
        self._refused = True
        self._disarm()
        self.transport.pause_reading()
        self.transport.write(response)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(_LINGER, self.transport.close)

    # -- uvicorn's hooks -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Checked after feeding: the same read may end the head and carry a body.
        if self._in_head and self._head_bytes > self._max_head:
            if not self.transport.is_closing():
                log.debug("request head over %d bytes from %s: 431", self._max_head, self.client)
                self._refuse(_TOO_LARGE)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head = False
        self._head_bytes = 0
        self._in_body = True
        self._arm()
        # A head that came in one read with what follows it was not counted above: measure
        # it (request line and header lines, as sent less optional whitespace).
        size = len(self.url) + 16 + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self._max_head:
            log.debug("request head over %d bytes from %s: 431", self._max_head, self.client)
            self._refuse(_TOO_LARGE)
            return
        limit = self._max_connections
        if limit is None or len(self.connections) <= limit:
            super().on_headers_complete()
            return
        global _last_cap_log
        now = self.loop.time()
        if now - _last_cap_log >= 10.0:  # one line per 10 s, however hard the flood
            _last_cap_log = now
            log.warning("connection limit %d reached: 503 to new requests", limit)
        app, self.app = self.app, _over_capacity
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._in_body = False
        self._disarm()
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Idle (or reading the next head) unless a pipelined request has just started.
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm()
