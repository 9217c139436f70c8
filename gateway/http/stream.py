"""``GET /stream/kernel/_/events``: authenticate, pick a filter, then stream from the hub.

The response is an sse-starlette :class:`EventSourceResponse` (its headers, its
``ServerSentEvent`` encoding, its uvicorn shutdown hook), shaped for a fan-out hub. Stock, it
runs a task group of four tasks per connection (body iterator, pinger, exit watcher,
disconnect listener), builds its headers and an ``anyio.Lock`` per response, and takes every
event through an async generator and ``ensure_bytes``. DESIGN.md §5 measured that at ~41 KB
and 4-5 tasks per connection and ~4x the p99 of a lean writer; here:

* the headers are sse-starlette's, built once for all responses;
* an idle stream is one task: the request's own, waiting for the client to go. Writing is the
  :class:`~gateway.fanout.connection.Connection`'s (direct to the transport, or its writer
  task while the transport is full, the stream is closing, or the server has no direct path);
* pings come from the hub's single timer; the exit signal is watched once per process.

:func:`stream_response` is the entry :class:`gateway.http.app.TransportScope` uses for plain
stream requests, past Starlette's middleware and routing: every frame a suspended request
keeps on its stack is memory held for as long as the stream lives.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.errors import InvalidParams, RateLimited, Unavailable
from gateway.fanout.connection import CYCLE_SCOPE_KEY, Connection, body
from gateway.fanout.frames import retry_frame
from gateway.fanout.resume import replay
from gateway.identity.visibility import build_filter

from .auth import authenticate_request
from .errors import error_response
from .query import Api, parse_query
from .state import GatewayState

__all__ = [
    "MAX_HEADER_BYTES",
    "STREAM_PATHS",
    "V4_PATHS",
    "V5_PATHS",
    "HubStreamResponse",
    "stream_events",
    "stream_response",
]

log = logging.getLogger(__name__)

#: the API v4 stream (manager 19.09), and API v5+'s session events (manager 20.03 on)
V4_PATHS: Final = ("/stream/kernel/_/events", "/v4/stream/kernel/_/events")
V5_PATHS: Final = ("/events/session",)
STREAM_PATHS: Final = (*V4_PATHS, *V5_PATHS)

#: all request header names and values together, at most (uvicorn's parser allows more)
MAX_HEADER_BYTES: Final = 16 * 1024


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

    def __init__(
        self,
        state: GatewayState,
        connection: Connection,
        last_event_id: str | None,
        *,
        retry_hint: bool,
    ) -> None:
        # No super().__init__(): everything it builds per response (headers, a send lock,
        # the body iterator) is either shared (_HEADERS) or unused by this shape.
        self._state = state
        self._connection = connection
        self._last_event_id = last_event_id
        self._retry_hint = retry_hint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "HEAD":  # headers only, as sse-starlette answers HEAD
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        state, connection, hub = self._state, self._connection, self._state.hub
        cycle: Any = scope.get(CYCLE_SCOPE_KEY)
        connection.attach(send, cycle, send_buffer=state.settings.send_buffer)
        if self._last_event_id is not None:
            # Hold live frames from the moment the hub can reach the connection: anything
            # dispatched before replay starts must wait for it.
            connection.begin_replay()
        hub.register(connection)
        resuming: asyncio.Future[None] | None = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
            if self._retry_hint:
                await send(body(retry_frame(state.settings.retry_ms)))
            connection.start_writing(cycle, hub.notify)
            if self._last_event_id is not None:
                resuming = asyncio.ensure_future(
                    replay(connection, hub, state.redis, state.keys, self._last_event_id)
                )
            if cycle is not None:
                # The request's task just waits for the client to go, or for the response
                # to complete, which uvicorn's receive() also reports as a disconnect.
                # (Inline, not a helper: one frame less on every idle stream's stack.)
                while (await receive())["type"] != "http.disconnect":
                    pass
            else:
                await connection.until_gone(receive)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if connection.abort_requested and task is not None and task.uncancel() == 0:
                return  # our own abort of a stuck write, not the server's cancellation
            raise
        finally:
            hub.unregister(connection)
            connection.close("disconnect")
            if resuming is not None:
                resuming.cancel()
                await asyncio.wait({resuming})
            await connection.finish()
            log.debug(
                "stream closed key=%s reason=%s", connection.access_key, connection.close_reason
            )


async def stream_events(request: Request) -> Response:
    """The endpoint: 503 while shutting down or at the replica's stream limit, 429 at the
    key's, 400/401/403/404 as :mod:`gateway.http.errors` maps the domain errors."""
    state: GatewayState = request.state.gateway
    if not state.accepting:
        raise Unavailable("This replica is shutting down", retry_after=1)
    if sum(len(name) + len(value) for name, value in request.scope["headers"]) > MAX_HEADER_BYTES:
        raise InvalidParams("Request headers too large", f"over {MAX_HEADER_BYTES} bytes")
    api: Api = "v5" if request.scope["path"] in V5_PATHS else "v4"
    query = parse_query(request.scope.get("query_string", b""), request.headers, api)
    caller = await authenticate_request(request, state)
    identity = caller.identity
    filter = await build_filter(identity, query, state.store)
    hub = state.hub
    if len(hub) >= state.settings.max_streams:
        raise Unavailable("This replica is at its stream limit", retry_after=5)
    if hub.streams_of(identity.access_key) >= state.settings.max_streams_per_key:
        raise RateLimited(
            "Too many streams for this access key",
            f"at most {state.settings.max_streams_per_key} per replica",
            retry_after=5,
        )
    log.debug("stream opened key=%s filter=%s", identity.access_key, filter)
    # The reconnect hint is for EventSource (browsers, with their session cookie). The
    # official SDKs read a standalone ``retry:`` block as an event with empty data (and
    # newer ones as seconds), and Backend.AI's manager never sent one.
    return HubStreamResponse(
        state,
        hub.new_connection(filter, identity.access_key, query.view),
        query.last_event_id,
        retry_hint=caller.method == "cookie",
    )


async def stream_response(scope: Scope, receive: Receive) -> Response:
    """The stream endpoint as a bare ASGI step (see the module docstring): the response to
    send, with the same error answers the Starlette app gives (:func:`error_response`). The
    caller awaits the response itself, so this frame is gone while the stream lives."""
    try:
        return await stream_events(Request(scope, receive))
    except Exception as exc:
        return error_response(exc, scope["path"])
