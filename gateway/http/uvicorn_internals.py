"""Everything the gateway takes from uvicorn beyond its public API, in one place, with the
range of uvicorn versions it was tested against (:data:`TESTED`) and a check of both.

uvicorn's public API is an ASGI server: it has no way to write to a response's transport
directly, and no limits on a request head. Two measured needs take more (ARCHITECTURE.md,
"Deliberate deviations"):

1. **Direct writes** (:func:`direct_path`, :class:`UvicornStream`). The hub writes each
   stream's coalesced queue as one HTTP chunk straight to the transport instead of through
   ASGI ``send`` (bench a100: ~17-18 µs of gateway CPU per write before, ~4-6 µs after). That
   needs uvicorn's ``RequestResponseCycle`` behind ``send`` (``send.__self__``) and six of
   its attributes: ``transport``, ``flow`` (``write_paused``), ``chunked_encoding``,
   ``disconnected``, ``response_complete`` and ``message_event``, on a connection of
   :class:`LimitedHttpToolsProtocol`, whose flow control hooks keep the stream's
   ``blocked`` flag, and whose ``connection_lost`` also tells the stream's own request
   (uvicorn tells only the newest, which a pipelined request behind the stream would be).
   Where they are missing (another server, uvicorn's own protocol, or a uvicorn whose cycle
   changed) the stream writes through ASGI ``send``: slower, never wrong, and (for a
   changed cycle) said once in the log.

2. **Serving**: :class:`Server` (uvicorn's ``Server`` with its ``handle_exit`` hook taken: a
   signal during start-up ends the process at once, where a start-up stuck in the app's
   lifespan never looked at ``should_exit``) and :func:`run_workers` (uvicorn's multiprocess
   supervisor, and its start-up failure code).

3. **The limited protocol** (:class:`LimitedHttpToolsProtocol`): uvicorn's httptools protocol
   with the limits it lacks. Stock, it reads a request head of any size (a 64 MB header to
   ``/health`` was answered 200 while the replica grew by 78 MB), starts no timer before the
   first request of a connection, and its keep-alive timer is cancelled by the first byte of
   the next request, so a connection that sends a partial head stays open forever. Its h11
   protocol honours ``h11_max_incomplete_event_size``, but h11 is not what the direct writes
   rely on. This protocol takes the limits from the uvicorn config
   :func:`gateway.http.server.uvicorn_options` builds, so every worker process (which gets
   the config, pickled) applies the same ones:

   * ``h11_max_incomplete_event_size``: bytes of one request head (request line and
     headers) read at most. Beyond it: 431, and the connection closes. Counted as bytes
     arrive, so a connection holds at most this much plus one socket read (256 KiB) of an
     unfinished head.
   * ``timeout_keep_alive``: seconds a connection may go without a complete request head,
     counted from its opening or from the end of its previous response, and again for the
     request's body from the end of its head (a login body that never completes was never
     timed out). Bytes arriving do not restart it. Then the connection closes, after a 408
     if a head or body had begun.
   * ``limit_concurrency``: connections open at once in this process. A request on a
     connection beyond it gets 503 with ``Retry-After`` and ``Connection: close``
     (problem+json, as every other error of the gateway).

   It also holds less per connection, which every idle stream pays for its whole life: its
   own fields in slots, and :class:`LeanEvent` and a list where uvicorn builds two
   ``asyncio.Event`` and a ``deque`` per connection (flow control's "writable", each
   request's "message", the queue of pipelined requests): ~2.3 KB of empty deques.

:func:`check_uvicorn` is run by ``gateway serve`` before it starts: a uvicorn whose protocol
lacks a hook this module overrides cannot serve (a one-line start-up error); one outside
:data:`TESTED` is logged as a warning. ``tests/integration/test_uvicorn_internals.py`` fails, naming
what differs, when the installed uvicorn is outside :data:`TESTED` or its cycle or protocol
lack what is used here; pyproject.toml's bound on uvicorn is :data:`TESTED`, which the test
also checks. To move to a newer uvicorn: widen :data:`TESTED` and the bound together, run the
suite and the fan-out bench (``python -m bench.fanout --against HEAD``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
from types import FrameType
from typing import Any, Final

import msgspec
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.server import ServerState

from gateway.errors import Unavailable

from .errors import error_response

#: uvicorn internals this module imports that the installed uvicorn does not have: reported
#: by check_uvicorn, one line at start-up, rather than an ImportError traceback
_MISSING: list[str] = []
try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError as exc:  # pragma: no cover - another uvicorn
    _MISSING.append(f"uvicorn.protocols.http.httptools_impl.HttpToolsProtocol ({exc})")

    class HttpToolsProtocol:  # type: ignore[no-redef]  # a stand-in: check_uvicorn refuses
        def __init__(self, *args: Any) -> None:
            raise RuntimeError("; ".join(_MISSING))


try:
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess
except ImportError as exc:  # pragma: no cover - another uvicorn
    _MISSING.append(f"uvicorn.config.STARTUP_FAILURE, uvicorn.supervisors.Multiprocess ({exc})")
    STARTUP_FAILURE = 3
    Multiprocess = None  # type: ignore[assignment, misc]


__all__ = [
    "DIRECT_SCOPE_KEY",
    "TESTED",
    "LeanEvent",
    "LimitedHttpToolsProtocol",
    "Server",
    "UvicornStream",
    "check_uvicorn",
    "direct_path",
    "holds_lean_events",
    "run_workers",
    "uvicorn_version",
]

log = logging.getLogger(__name__)

#: the uvicorn versions this module was tested against: at least the first, below the second
#: (pyproject.toml's dependency says the same)
TESTED: Final = ((0, 51, 0), (0, 56, 0))

#: where :class:`gateway.http.app.TransportScope` leaves a stream request's direct path in
#: the ASGI scope
DIRECT_SCOPE_KEY: Final = "kev.direct_path"

#: the attributes of uvicorn's request cycle the direct path uses
_CYCLE_ATTRIBUTES: Final = (
    "transport",
    "flow",
    "chunked_encoding",
    "disconnected",
    "response_complete",
    "message_event",
)
#: the hooks of uvicorn's httptools protocol the limited protocol overrides or calls
_PROTOCOL_HOOKS: Final = (
    "connection_made",
    "connection_lost",
    "pause_writing",
    "resume_writing",
    "data_received",
    "on_headers_complete",
    "on_body",
    "on_message_complete",
    "on_response_complete",
)


def uvicorn_version() -> tuple[int, ...]:
    """The installed uvicorn's version as numbers (``"0.55.0"`` -> ``(0, 55, 0)``)."""
    parts = []
    for part in uvicorn.__version__.split("."):
        digits = "".join(itertools.takewhile(str.isdigit, part))
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _tested_text() -> str:
    low, high = (".".join(map(str, v)) for v in TESTED)
    return f">={low},<{high}"


def check_uvicorn() -> tuple[list[str], list[str]]:
    """``(errors, warnings)`` about the installed uvicorn: errors when its httptools protocol
    lacks a hook :class:`LimitedHttpToolsProtocol` overrides (it cannot serve), a warning when
    its version is outside :data:`TESTED`. Each message names the version and the range."""
    version = uvicorn.__version__
    errors = [
        f"uvicorn {version} has no {missing}, which the gateway uses; install "
        f"uvicorn{_tested_text()}"
        for missing in _MISSING
    ]
    errors += [
        f"uvicorn {version}: its httptools protocol has no {hook}(), which the gateway's "
        f"limited protocol overrides; install uvicorn{_tested_text()}"
        for hook in _PROTOCOL_HOOKS
        if not _MISSING and not callable(getattr(HttpToolsProtocol, hook, None))
    ]
    warnings = []
    if not TESTED[0] <= uvicorn_version() < TESTED[1]:
        warnings.append(
            f"uvicorn {version} is outside the range the gateway was tested with "
            f"({_tested_text()}): its direct writes and request limits use uvicorn "
            "internals (gateway.http.uvicorn_internals)"
        )
    return errors, warnings


class UvicornStream:
    """The direct path to one uvicorn (httptools) response on a
    :class:`LimitedHttpToolsProtocol` connection: the
    :class:`gateway.fanout.connection.DirectPath` of a stream, and, once the headers went out
    chunked, its :class:`~gateway.fanout.connection.Sink`."""

    __slots__ = ("_cycle", "blocked", "transport", "write_chunk")

    def __init__(self, cycle: Any, protocol: LimitedHttpToolsProtocol) -> None:
        self._cycle = cycle
        self.transport = cycle.transport
        #: the transport's own write: the hub frames each chunk, no call layer per write
        self.write_chunk = cycle.transport.write
        #: the transport holds more than its high-water mark (uvicorn's flow control:
        #: ``write_paused``), or the client is gone (the cycle's ``disconnected``: the writer
        #: task, not a write to a dead transport, sees it out). Kept by the protocol's own
        #: hooks as they happen, so that the hub's flush reads one attribute of an object it
        #: reads anyway: reading flow control and the cycle (each an instance dict) for every
        #: stream at every flush was 5.9% of the gateway's samples at a25 (py-spy).
        self.blocked = bool(cycle.flow.write_paused or cycle.disconnected)
        protocol.stream = self

    def chunked(self) -> bool:
        """The response is chunked (decided when the headers went out)."""
        return bool(self._cycle.chunked_encoding)


class Server(uvicorn.Server):
    """uvicorn's server, which a signal during start-up ends at once (nothing is served, so
    nothing to drain; and a start-up stuck in the app's lifespan never looks at
    ``should_exit``). Once serving, signals go to the lifespan's handler
    (:func:`gateway.replica.lifespan._chain_exit_signals`), which drains before it passes
    them here."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and sockets:
            host, port = sockets[0].getsockname()[:2]
            log.info("listening on http://%s:%d", host, port)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.started:
            log.warning("signal %d during start-up: exiting", sig)
            os._exit(128 + sig)
        # The drain is done (or a second signal skips it): stop, with exit status 0. As
        # uvicorn's own handler, but without recording the signal to raise it again once
        # stopped (a replica drained as asked would end killed by it).
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # Ctrl-C again: no more waiting
        else:
            self.should_exit = True


def run_workers(config: Config, sock: socket.socket) -> bool:
    """Serve ``config`` (a factory, ``config.workers`` processes) on ``sock`` with uvicorn's
    multiprocess supervisor until a signal ends it; False when a worker failed to start."""
    supervisor = Multiprocess(config, sockets=[sock])
    supervisor.run()
    return not any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)


_warned_no_cycle = False


def direct_path(send: object) -> UvicornStream | None:
    """The direct path behind an ASGI ``send``: uvicorn's request cycle, when ``send`` is one
    of its bound methods and the cycle has what :class:`UvicornStream` uses; else None (the
    stream writes through ``send``). A uvicorn cycle that lacks an attribute is logged once."""
    global _warned_no_cycle
    cycle = getattr(send, "__self__", None)
    if cycle is None or type(cycle).__module__ != HttpToolsProtocol.__module__:
        return None  # not uvicorn's httptools protocol (h11, another server): ASGI send
    if all(hasattr(cycle, name) for name in _CYCLE_ATTRIBUTES):
        protocol = cycle.transport.get_protocol()
        if not isinstance(protocol, LimitedHttpToolsProtocol):
            return None  # uvicorn's own protocol: nothing keeps UvicornStream.blocked
        return UvicornStream(cycle, protocol)
    if not _warned_no_cycle:
        _warned_no_cycle = True
        missing = [name for name in _CYCLE_ATTRIBUTES if not hasattr(cycle, name)]
        log.warning(
            "uvicorn %s: its request cycle has no %s; streams write through ASGI send, "
            "slower (tested: uvicorn%s)",
            uvicorn.__version__,
            ", ".join(missing),
            _tested_text(),
        )
    return None


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


class LeanEvent:
    """What uvicorn asks of the ``asyncio.Event`` of each connection (flow control's
    "writable") and of each request (its "message", which an idle stream's ``receive()``
    waits on): ``wait``, ``set``, ``clear``, ``is_set``, with the same meaning.

    ``asyncio.Event`` keeps its waiters in a ``collections.deque``, which allocates a block of
    64 slots even empty: 760 bytes per event. This keeps a list only while someone waits,
    and ``wait()`` returns the waiter's future itself (awaiting it is awaiting the event), so
    a suspended ``receive()`` holds no coroutine frame for it either."""

    __slots__ = ("_value", "_waiters")

    def __init__(self, value: bool = False) -> None:
        self._value = value
        #: the one waiter's future (the usual case), a list of them, or None
        self._waiters: asyncio.Future[bool] | list[asyncio.Future[bool]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        """Set the flag and wake every waiter (as ``asyncio.Event.set``)."""
        if not self._value:
            self._value = True
            waiters, self._waiters = self._waiters, None
            if isinstance(waiters, asyncio.Future):
                waiters = [waiters]
            for fut in waiters or ():
                if not fut.done():
                    fut.set_result(True)

    def clear(self) -> None:
        self._value = False

    def wait(self) -> asyncio.Future[bool]:
        """An awaitable that completes (True) once the flag is set: at once if it is. A
        cancelled waiter's future is cancelled with it and dropped at the next wait or set."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._value:
            fut.set_result(True)
            return fut
        waiters = self._waiters
        if waiters is None or (isinstance(waiters, asyncio.Future) and waiters.done()):
            self._waiters = fut
        else:
            if isinstance(waiters, asyncio.Future):
                waiters = [waiters]
            self._waiters = [w for w in waiters if not w.done()] + [fut]
        return fut


def holds_lean_events(send: object) -> bool:
    """Whether the connection behind an ASGI ``send`` (uvicorn's request cycle) holds
    :class:`LeanEvent` where uvicorn builds its two events; the guard test asks, so a uvicorn
    that moved them is noticed (it still works, holding ~1.5 KB more per stream)."""
    cycle = getattr(send, "__self__", None)
    flow = getattr(cycle, "flow", None)
    return (
        type(getattr(cycle, "message_event", None)) is LeanEvent
        and type(getattr(flow, "_is_writable_event", None)) is LeanEvent
    )


class _Pipeline(list):  # type: ignore[type-arg]
    """uvicorn's queue of pipelined requests (it calls ``appendleft``, ``pop`` and tests
    it for emptiness), as a list: an empty deque is 760 bytes, and a stream's connection
    never has another request queued."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with the head size, head deadline and connection cap of the
    module docstring (one instance per connection, as its base)."""

    # Its own fields in slots, not in the instance dict: CPython 3.11 keeps an instance dict
    # compact (keys shared by the class) for at most 30 attributes; uvicorn's 28 and these 8
    # made every connection's dict a full one of its own, 1,584 bytes instead of ~300
    # (tracemalloc, per idle stream).
    __slots__ = (
        "_head_bytes",
        "_head_timeout",
        "_head_timer",
        "_in_body",
        "_in_head",
        "_max_connections",
        "_max_head",
        "_refused",
        "stream",
    )

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
        self.pipeline = _Pipeline()  # type: ignore[assignment]
        #: the direct path of this connection's latest stream, whose ``blocked`` the flow
        #: hooks below keep
        self.stream: UvicornStream | None = None

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
        # flow control's "writable" event (uvicorn's FlowControl); left as it is if it moved
        writable = getattr(self.flow, "_is_writable_event", None)
        if type(writable) is asyncio.Event:
            self.flow._is_writable_event = LeanEvent(writable.is_set())  # type: ignore[assignment]
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.blocked = True  # for good: the client is gone
            # uvicorn tells only its newest request: with a request pipelined behind the
            # stream, the stream's own would wait in receive() and stay in the hub until
            # the process ends. Tell it too (what uvicorn does for the newest one).
            cycle = stream._cycle
            if not cycle.response_complete and not cycle.disconnected:
                cycle.disconnected = True
                cycle.message_event.set()

    # Flow control: uvicorn's hooks tell its FlowControl; these also keep the blocked flag
    # of the connection's stream (UvicornStream), which the hub's flush reads.

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.stream is not None:
            self.stream.blocked = True

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.stream is not None:
            self.stream.blocked = False

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
            self._start_cycle()
            return
        global _last_cap_log
        now = self.loop.time()
        if now - _last_cap_log >= 10.0:  # one line per 10 s, however hard the flood
            _last_cap_log = now
            log.warning("connection limit %d reached: 503 to new requests", limit)
        app, self.app = self.app, _over_capacity
        try:
            self._start_cycle()
        finally:
            self.app = app

    def _start_cycle(self) -> None:
        """uvicorn's ``on_headers_complete`` (the request's cycle, its task started or
        queued), and the new cycle's message event made a :class:`LeanEvent` before anything
        has set or awaited it (the task has not run yet; the body comes after this)."""
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not before and cycle is not None and type(cycle.message_event) is asyncio.Event:
            cycle.message_event = LeanEvent(cycle.message_event.is_set())  # type: ignore[assignment]

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
        if self.stream is not None and self.stream._cycle.response_complete:
            self.stream = None  # its response is over: nothing of it is kept past it
        super().on_response_complete()
        # Idle (or reading the next head) unless a pipelined request has just started.
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm()
