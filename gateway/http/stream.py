"""``GET /stream/kernel/_/events``: authenticate, pick a filter, then stream from the hub.

The response is shaped for a fan-out hub, not taken from sse-starlette's
:class:`EventSourceResponse` (whose ``ServerSentEvent`` encodes the frames,
:mod:`gateway.fanout.frames`). Stock, that response runs a task group of four tasks per
connection (body iterator, pinger, exit watcher, disconnect listener), builds its headers and
an ``anyio.Lock`` per response, and takes every event through an async generator and
``ensure_bytes``: measured at ~41 KB and 4-5 tasks per connection and ~4x the p99 of a lean
writer (docs/design.md §5). Here:

* the headers are written out once for all responses (:data:`SSE_HEADERS`);
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
import random
from typing import Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.errors import InvalidParams, RateLimited, Unavailable
from gateway.fanout.connection import Connection, DirectPath, body
from gateway.fanout.frames import retry_frame
from gateway.fanout.resume import positions, resume
from gateway.fanout.stats import ThrottledLog
from gateway.identity.methods import SignedCredential
from gateway.identity.visibility import build_filter
from gateway.replica.handoff import Ticket, request_digest
from gateway.replica.limits import Slot
from gateway.replica.partitions import Pin
from gateway.replica.state import GatewayState
from publisher.partitions import is_vector
from publisher.tasks import cancel_and_wait

from .auth import authenticate_request
from .errors import error_response
from .query import Api, parse_query
from .uvicorn_internals import DIRECT_SCOPE_KEY

__all__ = [
    "SSE_HEADERS",
    "STREAM_PATHS",
    "V4_PATHS",
    "V5_PATHS",
    "HubStreamResponse",
    "stream_events",
    "stream_response",
]

log = logging.getLogger(__name__)

#: the API v4 stream (manager 19.09), and API v5+'s session events (manager 20.03 on); each
#: also under ``/func/``, as Backend.AI's web server proxies them to the manager (its
#: ``/func/{path:stream/kernel/_/events}`` and ``/func/{path:.*$}`` routes,
#: ``src/ai/backend/web/server.py`` 23.09.0 and 26.8.1), so an ingress on the web UI's own
#: site can send them here
V4_PATHS: Final = (
    "/stream/kernel/_/events",
    "/v4/stream/kernel/_/events",
    "/func/stream/kernel/_/events",
)
V5_PATHS: Final = ("/events/session", "/func/events/session")
STREAM_PATHS: Final = (*V4_PATHS, *V5_PATHS)

#: a resuming stream lives ``stream_max_lifetime`` times a factor drawn from this range
LIFETIME_JITTER: Final = (0.85, 1.15)


#: every stream's response headers (docs/design.md §3): the SSE media type; no caching (the
#: API's ``no-cache``, where sse-starlette sends ``no-store``); ``X-Accel-Buffering: no`` so
#: nginx passes each event on at once; keep-alive, as sse-starlette sends them
SSE_HEADERS: Final = [
    (b"cache-control", b"no-cache"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
    (b"content-type", b"text/event-stream; charset=utf-8"),
]


class HubStreamResponse(Response):
    """One client's stream, fed by the hub (see the module docstring for why it is shaped).

    A :class:`~starlette.responses.Response` only to the router, which calls it as an ASGI
    app; none of the base class's per-response state (headers, body) is built."""

    raw_headers = SSE_HEADERS
    background = None

    def __init__(
        self,
        state: GatewayState,
        connection: Connection,
        last_event_id: str | None,
        *,
        retry_hint: bool,
        slot: Slot | None = None,
        pin: Pin | None = None,
    ) -> None:
        # No super().__init__(): its headers and body are either shared (SSE_HEADERS) or
        # unused by this shape.
        self._state = state
        self._connection = connection
        self._last_event_id = last_event_id
        self._retry_hint = retry_hint
        #: the stream's place under its key's limit, until the hub counts it
        self._slot = slot
        #: the partitions it holds subscribed to, until it ends (more than one partition)
        self._pin = pin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Admitted by stream_events: from here (no await before hub.register) it counts in
        # the hub instead.
        self._state.opening -= 1
        if scope["method"] == "HEAD":  # headers only, as sse-starlette answers HEAD
            if self._slot is not None:
                self._slot.release()
            if self._pin is not None:
                self._pin.release()
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        state, connection, hub = self._state, self._connection, self._state.hub
        direct: DirectPath | None = scope.get(DIRECT_SCOPE_KEY)
        try:
            connection.attach(send, direct, send_buffer=state.settings.fanout.send_buffer)
            if self._last_event_id is not None:
                # Hold live frames from the moment the hub can reach the connection: anything
                # dispatched before replay starts must wait for it.
                connection.begin_replay()
            hub.register(connection)
        finally:
            if self._slot is not None:  # the hub counts the stream now (or it never started)
                self._slot.release()
                self._slot = None
        resuming: asyncio.Future[None] | None = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            if self._retry_hint:
                # Jittered per stream: after a crash, EventSource waits this long, so the
                # clients of one replica come back spread over retry_jitter_ms.
                connection.retry_field = True
                await send(body(retry_frame(connection.retry_hint())))
            connection.start_writing(direct, hub.notify)
            if self._last_event_id is not None:
                resuming = asyncio.ensure_future(
                    resume(connection, hub, state.redis, state.buses, self._last_event_id)
                )
            if direct is not None:
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
            if self._pin is not None:
                self._pin.release()
            connection.close("disconnect")
            if resuming is not None:
                await cancel_and_wait(resuming)
            await connection.finish()
            log.debug(
                "stream closed key=%s reason=%s", connection.access_key, connection.close_reason
            )


#: one warning a minute per limit, with how many were refused meanwhile
_refusals = ThrottledLog(logger=log)


def _limit_kind(state: GatewayState) -> str:
    return "fd_limit" if state.stream_limit < state.settings.limits.max_streams else "max_streams"


def _refuse(state: GatewayState, limit: str) -> None:
    state.refused[limit] += 1
    _refusals.warn(limit, "stream refused: %s (%d streams open)", limit, len(state.hub))


async def stream_events(request: Request) -> Response:
    """The endpoint: 503 while shutting down or at the replica's stream limit, 429 at the
    key's, 400/401/403/404 as :mod:`gateway.http.errors` maps the domain errors."""
    state: GatewayState = request.state.gateway
    if not state.accepting:
        raise Unavailable("This replica is shutting down", retry_after=1)
    hub = state.hub
    if len(hub) + state.opening >= state.stream_limit:
        # Before any other work: each stream holds a file descriptor, and past this limit
        # the next connections could not even be accepted (no answer at all, /health too).
        _refuse(state, _limit_kind(state))
        raise Unavailable("This replica is at its stream limit", retry_after=5)
    # The request head's size (max_header_bytes) is bounded for every path by the server
    # protocol (gateway.http.uvicorn_internals), before any of this runs.
    api: Api = "v5" if request.scope["path"] in V5_PATHS else "v4"
    query = parse_query(request.scope.get("query_string", b""), request.headers, api)
    if query.last_event_id is not None and is_vector(query.last_event_id):
        try:  # one position per partition, of this deployment's partitions
            if not hub.lanes:
                raise ValueError("a vector id, and this deployment has one partition")
            positions(query.last_event_id, len(hub.lanes))
        except ValueError as exc:
            raise InvalidParams("Invalid API parameters", f"Last-Event-ID: {exc}") from None
    credential = await authenticate_request(request, state)
    identity = credential.identity
    filter = await build_filter(identity, query, state.store)
    limit = state.settings.limits.max_streams_per_key
    # Counted and reserved in one step (gateway.replica.limits): the slot holds until the
    # response registers the stream, and is released on every way out before that.
    slot: Slot | None = None
    if state.leases is not None:
        slot = await state.leases.reserve(identity.access_key)
        admitted = slot is not None
    else:
        admitted = hub.streams_of(identity.access_key) < limit
    if not admitted:
        _refuse(state, "key_limit")
        raise RateLimited(
            "Too many streams for this access key",
            f"at most {limit} across the gateway fleet",
            retry_after=5,
        )
    pin: Pin | None = None
    try:
        if state.keeper is not None:  # the partitions it needs, subscribed to (and held)
            pin = await state.keeper.pin(state.keeper.needs(hub.lane_of(filter)))
        last_event_id = query.last_event_id
        resumes = credential.resumes or last_event_id is not None or query.resumable
        handoff, signed = None, ""
        if not resumes and isinstance(credential, SignedCredential) and request.method == "GET":
            # An SDK's stream: if a drained replica left the stream this very signed request
            # opened, this is its reconnect: resume where it stood (gateway.replica.handoff)
            handoff, signed = state.handoff, request_digest(request.headers["authorization"])
            if credential.handed_off is not None:  # claimed as its stale date was let in
                last_event_id = credential.handed_off
            elif handoff is not None:
                last_event_id = await handoff.take(identity.access_key, signed)
        refusal = None
        if not state.accepting:  # SIGTERM came while this request was being checked
            refusal = Unavailable("This replica is shutting down", retry_after=1)
        elif len(hub) + state.opening >= state.stream_limit:  # again: others admitted meanwhile
            _refuse(state, _limit_kind(state))
            refusal = Unavailable("This replica is at its stream limit", retry_after=5)
        if refusal is not None:
            if handoff is not None and last_event_id is not None:
                await handoff.give_back(identity.access_key, signed, last_event_id)
            raise refusal
        log.debug("stream opened key=%s filter=%s", identity.access_key, filter)
        connection = hub.new_connection(filter, identity.access_key, query.view)
        lifetime = state.settings.fanout.stream_max_lifetime
        if lifetime and resumes:
            # Only clients that resume: the official SDKs end their command on server_close.
            # The jitter keeps streams opened together (after a deploy) from ending together.
            connection.expires_at = hub.clock() + lifetime * random.uniform(*LIFETIME_JITTER)
        elif handoff is not None:
            if last_event_id is not None:
                log.info(
                    "stream of key=%s resumes at %s, handed off by a drained replica",
                    identity.access_key,
                    last_event_id,
                )
            # where it begins: what a drain records until a tick finds it all written
            connection.handoff = Ticket(signed, last_event_id or hub.position(filter))
        if state.reauth is not None:  # rights follow identity (gateway.replica.reauthorize)
            state.reauth.track(connection, credential, query)
    except BaseException:
        if slot is not None:
            slot.release()
        if pin is not None:
            pin.release()
        raise
    state.opening += 1  # until the response registers the stream
    # The reconnect hint is for EventSource (browsers, with their session cookie). The
    # official SDKs read a standalone ``retry:`` block as an event with empty data (and
    # newer ones as seconds), and Backend.AI's manager never sent one.
    return HubStreamResponse(
        state, connection, last_event_id, retry_hint=credential.resumes, slot=slot, pin=pin
    )


async def stream_response(scope: Scope, receive: Receive) -> Response:
    """The stream endpoint as a bare ASGI step (see the module docstring): the response to
    send, with the same error answers the Starlette app gives (:func:`error_response`). The
    caller awaits the response itself, so this frame is gone while the stream lives."""
    try:
        return await stream_events(Request(scope, receive))
    except Exception as exc:
        return error_response(exc, scope["path"])
