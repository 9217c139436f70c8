"""``GET /stream/kernel/_/events``: authenticate, pick a filter, then stream from the hub.

The response is an sse-starlette :class:`EventSourceResponse` (its headers, its
``ServerSentEvent`` encoding, its uvicorn shutdown hook), shaped for a fan-out hub. Stock, it
runs a task group of four tasks per connection (body iterator, pinger, exit watcher,
disconnect listener), builds its headers and an ``anyio.Lock`` per response, and takes every
event through an async generator and ``ensure_bytes``. DESIGN.md §5 measured that at ~41 KB
and 4-5 tasks per connection and ~4x the p99 of a lean writer; here:

* the headers are sse-starlette's, built once for all responses;
* an idle stream is one task: the request's own, waiting for the client to go. The hub
  writes to the transport directly (:mod:`gateway.direct`); a writer task exists only while
  the transport is full or the stream is closing, or for a server without a direct path;
* pings come from the hub's single timer; the exit signal is watched once per process.

:func:`stream_response` is the entry :class:`gateway.app.TransportScope` uses for plain stream
requests, past Starlette's middleware and routing: every frame a suspended request keeps on
its stack is memory held for as long as the stream lives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Protocol

import msgspec
from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from publisher.schema import decode_event

from .auth import authenticate, raw_target
from .direct import CYCLE_SCOPE_KEY, TransportSink
from .errors import Problem, redis_unavailable
from .frames import event_frame, notice_frame, parse_stream_id, retry_frame, server_close_frame
from .history import first_available, read_after, was_trimmed
from .hub import Client, StreamId
from .visibility import build_filter, parse_query
from .websession import authenticate_cookie

if TYPE_CHECKING:
    from .app import GatewayState

__all__ = ["HubStreamResponse", "stream_events", "stream_response"]

log = logging.getLogger(__name__)

#: all request header names and values together, at most (uvicorn's parser allows more)
MAX_HEADER_BYTES: Final = 16 * 1024


class _Abortable(Protocol):
    def abort(self) -> None: ...


async def _no_body() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


#: sse-starlette's SSE headers (text/event-stream; charset=utf-8, X-Accel-Buffering: no,
#: Connection: keep-alive) with the API's ``Cache-Control: no-cache``, built once.
_HEADERS: Final = EventSourceResponse(
    _no_body(), headers={"Cache-Control": "no-cache"}, ping=0, sep="\n"
).raw_headers


class HubStreamResponse(EventSourceResponse):
    """One client's stream, fed by the hub (see the module docstring for why it is shaped)."""

    raw_headers = _HEADERS
    background = None

    def __init__(self, state: GatewayState, client: Client, last_event_id: str | None) -> None:
        # No super().__init__(): everything it builds per response (headers, a send lock,
        # the body iterator) is either shared (_HEADERS) or unused by this shape.
        self._state = state
        self._client = client
        self._last_event_id = last_event_id
        self._abort_requested = False
        self._send: Send | None = None
        self._writer: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._transport: _Abortable | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "HEAD":  # headers only, as sse-starlette answers HEAD
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        state, client, hub = self._state, self._client, self._state.hub
        cycle = scope.get(CYCLE_SCOPE_KEY)
        self._transport = cycle.transport if cycle is not None else None
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._send = send
        client.abort = self._abort
        client.on_wake = self._ensure_writer
        if self._transport is not None and state.settings.send_buffer:
            _limit_send_buffer(self._transport, state.settings.send_buffer)
        if self._last_event_id is not None:
            # Hold live frames from the moment the hub can reach the client: anything
            # dispatched before replay starts must wait for it.
            client.begin_replay()
        hub.register(client)
        replay: asyncio.Future[None] | None = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            await send(_body(retry_frame(state.settings.retry_ms)))
            if cycle is not None and cycle.chunked_encoding:
                # the headers are out: from here the hub may write chunks directly
                client.go_direct(TransportSink(cycle), hub.notify)
            else:
                self._ensure_writer()  # every write goes through ASGI send
            if self._last_event_id is not None:
                replay = asyncio.ensure_future(self._replay(self._last_event_id))
            if cycle is not None:
                # The request's task just waits for the client to go, or for the response
                # to complete, which uvicorn's receive() also reports as a disconnect.
                # (Inline, not a helper: one frame less on every idle stream's stack.)
                while (await receive())["type"] != "http.disconnect":
                    pass
            else:  # not every server wakes a pending receive() when the response ends
                listener = asyncio.ensure_future(self._listen_for_disconnect(receive))
                assert self._writer is not None
                try:
                    await asyncio.wait({listener, self._writer}, return_when="FIRST_COMPLETED")
                finally:
                    listener.cancel()
                    await asyncio.wait({listener})
        except asyncio.CancelledError:
            if self._abort_requested and task.uncancel() == 0:
                return  # our own abort of a stuck write, not the server's cancellation
            raise
        finally:
            hub.unregister(client)
            client.close("disconnect")
            pending = [f for f in (self._writer, replay) if f is not None]
            for future in pending:
                future.cancel()
            if pending:
                await asyncio.wait(pending)
            log.debug("stream closed key=%s reason=%s", client.access_key, client.close_reason)

    def _abort(self) -> None:
        """The hub's way to end a write stuck past the deadline."""
        self._abort_requested = True
        if self._transport is not None:
            self._transport.abort()  # uvicorn: the pending send returns, the socket is gone
        elif self._task is not None:
            self._task.cancel()

    def _ensure_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def _write_loop(self) -> None:
        """Writes through ASGI send while the direct path cannot: no sink, a full transport
        (send waits for the drain, and the write deadline measures that wait), the close."""
        client, send = self._client, self._send
        assert send is not None
        clock = self._state.hub.clock
        while True:
            await client.wait()
            data = client.take()
            if data:
                # The hub's timer evicts a client whose write is stuck past the deadline.
                client.writing_since = clock() or 1e-9
                await send(_body(data))
                client.writing_since = 0.0
            if client.closed:
                break
            sink = client.sink
            if sink is not None and not sink.paused():
                client.resume_direct()  # drained: the hub's flush takes over again
                return
        reason = client.close_reason
        # A stuck or vanished client cannot take a goodbye; every other close is announced.
        if reason not in (None, "disconnect", "write_timeout") and not self._abort_requested:
            assert reason is not None and reason != "disconnect"
            client.writing_since = clock() or 1e-9
            await send(_body(server_close_frame(reason, self._state.settings.retry_ms)))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            client.writing_since = 0.0

    async def _listen_for_disconnect(self, receive: Receive) -> None:
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                self._client.close("disconnect")
                return

    async def _replay(self, last_event_id: str) -> None:
        """Send what history holds after ``last_event_id`` through the client's filter, while
        live frames are held back; then release the held ones that replay did not cover."""
        state, client = self._state, self._client
        redis, history = state.redis, state.keys.history
        last: StreamId = parse_stream_id(last_event_id)
        try:
            if await was_trimmed(redis, history, last_event_id):
                client.push(notice_frame(last_event_id, await first_available(redis, history)))
            async for batch in read_after(redis, history, last_event_id):
                for raw_id, payload in batch:
                    last = parse_stream_id(raw_id)
                    try:
                        event = decode_event(payload)
                    except msgspec.DecodeError:
                        continue  # the hub counted it when it went live
                    if client.filter.matches(event):
                        client.push(event_frame(raw_id.decode(), event))
                # Replay is pulled, so it waits for the client instead of evicting it.
                while client.buffered > client.cap // 2 and not client.closed:
                    await asyncio.sleep(0.005)
                if client.closed:
                    return
        except Exception:
            log.exception("replay after %s failed; closing the stream", last_event_id)
            client.close("resume_failed")
            return
        finally:
            if not client.closed:
                client.end_replay(last)


def _limit_send_buffer(transport: _Abortable, size: int) -> None:
    """Bound what the kernel holds for a client that stopped reading; past it, the
    transport pauses and the write deadline starts to count."""
    sock = getattr(transport, "get_extra_info", lambda _: None)("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def _body(data: bytes) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": True}


async def stream_events(request: Request) -> Response:
    state: GatewayState = request.state.gateway
    if not state.accepting:
        raise Problem(
            503,
            "service-unavailable",
            "This replica is shutting down",
            headers={"Retry-After": "1"},
        )
    if sum(len(name) + len(value) for name, value in request.scope["headers"]) > MAX_HEADER_BYTES:
        raise Problem(
            400, "invalid-api-params", "Request headers too large", f"over {MAX_HEADER_BYTES} bytes"
        )
    query = parse_query(request.scope.get("query_string", b""), request.headers)
    try:
        # A browser (EventSource) has no signature, only its session cookie.
        identity = None
        if "authorization" not in request.headers:
            identity = await authenticate_cookie(request, state)
        if identity is None:
            identity = await authenticate(
                request.method,
                raw_target(
                    request.scope.get("raw_path") or request.scope["path"].encode(),
                    request.scope["query_string"],
                ),
                request.headers,
                state.store,
                now=datetime.now(UTC),
                max_skew=state.max_skew,
            )
    except Problem as exc:
        state.auth_failures[exc.title] += 1
        raise
    filter = await build_filter(identity, query, state.store)
    log.debug("stream request key=%s filter=%s", identity.access_key, filter)
    hub = state.hub
    if len(hub) >= state.settings.max_streams:
        raise Problem(
            503,
            "service-unavailable",
            "This replica is at its stream limit",
            headers={"Retry-After": "5"},
        )
    if hub.streams_of(identity.access_key) >= state.settings.max_streams_per_key:
        raise Problem(
            429,
            "rate-limit-exceeded",
            "Too many streams for this access key",
            f"at most {state.settings.max_streams_per_key} per replica",
            headers={"Retry-After": "5"},
        )
    log.debug("stream opened key=%s filter=%s", identity.access_key, filter)
    return HubStreamResponse(
        state, hub.new_client(filter, identity.access_key), query.last_event_id
    )


async def stream_response(scope: Scope, receive: Receive) -> Response:
    """The stream endpoint as a bare ASGI step (see the module docstring): the response to
    send, with the same error answers the Starlette app gives. The caller awaits the
    response itself, so this frame is gone while the stream lives."""
    try:
        return await stream_events(Request(scope, receive))
    except Problem as exc:
        return exc.response()
    except RedisError as exc:
        log.warning("redis unavailable for a stream request: %s", exc)
        return redis_unavailable()
