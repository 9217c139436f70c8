"""``GET /stream/kernel/_/events``: authenticate, pick a filter, then stream from the hub.

The response is an sse-starlette :class:`EventSourceResponse` (its headers, its
``ServerSentEvent`` encoding, its uvicorn shutdown hook), shaped for a fan-out hub. Stock, it
runs a task group of four tasks per connection (body iterator, pinger, exit watcher,
disconnect listener) and takes every event through an async generator and ``ensure_bytes``.
Measured against this lean writer (DESIGN.md §5): ~41 KB and 4-5 tasks per connection and
~4x the p99 latency, versus ~12 KB. So :meth:`HubStreamResponse.__call__` replaces the task
group with one writer loop (this request's own task) plus one disconnect listener; pings come
from the hub's single timer; the exit signal is watched once per process (:mod:`gateway.app`).
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
from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from publisher.schema import decode_event

from .auth import authenticate, raw_target
from .direct import CYCLE_SCOPE_KEY, TransportSink
from .errors import Problem
from .frames import event_frame, notice_frame, parse_stream_id, retry_frame, server_close_frame
from .history import first_available, read_after, was_trimmed
from .hub import Client, StreamId
from .visibility import build_filter, parse_query
from .websession import authenticate_cookie

if TYPE_CHECKING:
    from .app import GatewayState

__all__ = ["HubStreamResponse", "stream_events"]

log = logging.getLogger(__name__)

#: all request header names and values together, at most (uvicorn's parser allows more)
MAX_HEADER_BYTES: Final = 16 * 1024


class _Abortable(Protocol):
    def abort(self) -> None: ...


async def _no_body() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


class HubStreamResponse(EventSourceResponse):
    """One client's stream, fed by the hub (see the module docstring for why it is shaped)."""

    def __init__(self, state: GatewayState, client: Client, last_event_id: str | None) -> None:
        super().__init__(_no_body(), headers={"Cache-Control": "no-cache"}, ping=0, sep="\n")
        self._state = state
        self._client = client
        self._last_event_id = last_event_id
        self._abort_requested = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "HEAD":  # headers only, as sse-starlette answers HEAD
            await super().__call__(scope, receive, send)
            return
        state, client, hub = self._state, self._client, self._state.hub
        cycle = scope.get(CYCLE_SCOPE_KEY)
        transport: _Abortable | None = cycle.transport if cycle is not None else None
        task = asyncio.current_task()
        assert task is not None

        def abort() -> None:
            self._abort_requested = True
            if transport is not None:
                transport.abort()  # uvicorn: the pending send returns, the socket is gone
            else:
                task.cancel()

        client.abort = abort
        if transport is not None and state.settings.send_buffer:
            _limit_send_buffer(transport, state.settings.send_buffer)
        if self._last_event_id is not None:
            # Hold live frames from the moment the hub can reach the client: anything
            # dispatched before replay starts must wait for it.
            client.begin_replay()
        hub.register(client)
        listener = asyncio.ensure_future(self._listen_for_disconnect(receive))
        replay: asyncio.Future[None] | None = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await send(_body(retry_frame(state.settings.retry_ms)))
            if cycle is not None:  # headers are out: from here the hub may write directly
                client.go_direct(TransportSink(cycle), hub.notify)
            if self._last_event_id is not None:
                replay = asyncio.ensure_future(self._replay(self._last_event_id))
            await self._write_loop(send)
        except asyncio.CancelledError:
            if self._abort_requested and task.uncancel() == 0:
                return  # our own abort of a stuck write, not the server's cancellation
            raise
        finally:
            hub.unregister(client)
            client.close("disconnect")
            pending = [f for f in (listener, replay) if f is not None]
            for future in pending:
                future.cancel()
            await asyncio.wait(pending)
            log.debug("stream closed key=%s reason=%s", client.access_key, client.close_reason)

    async def _write_loop(self, send: Send) -> None:
        client = self._client
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
