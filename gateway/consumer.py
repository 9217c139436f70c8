"""A consumer of the event stream: signs with a keypair, follows the stream across drops,
resumes by last id, and never shows a corrupted or missing event as if nothing happened.

Built on httpx (HTTP, timeouts, proxies, TLS), with an SSE parser of its own:

* :class:`SSEParser` is WHATWG's "event stream interpretation" (HTML Living Standard,
  §9.2.6): UTF-8 decoded incrementally (a character split across two reads stays one
  character), a leading BOM dropped, lines split at ``\\r\\n``, ``\\r`` or ``\\n`` (also
  when a ``\\r\\n`` is split across reads), comments counted, ``event``/``data``/``id``/``retry``
  fields, an event with no ``data`` line not dispatched (a standalone ``retry:`` block, a
  ping), ``id`` kept across events (seeded with the id a resume starts from), ``retry`` only
  when all ASCII digits. A line or an event over ``max_line`` characters raises
  :class:`BadStream` (a hostile server cannot fill memory). httpx-sse's public API parses
  only a whole httpx response and hides comments and the bytes between events, which the
  liveness check and the tests that feed bytes need; its decoders are private.
* :func:`open_stream` is one signed request, no reconnect: ``async with open_stream(...) as
  (parser, events)``. A silence longer than ``idle_timeout`` seconds (the server pings every
  15 s by default) raises :class:`DeadLink`: a frozen proxy is noticed.
* :class:`KernelEventStream` reconnects with ``Last-Event-ID`` after a ``server_close``, a
  drop, a dead link, a 5xx or a 429, waiting what the server asks (``retry:`` field,
  ``server_close``'s ``retry``, ``Retry-After``), doubled per consecutive failed attempt up
  to ``max_backoff``, plus up to 50 % random jitter. It asks the server for rebalancing
  closes (``resumable=1``): it resumes losslessly, so a gateway with a stream lifetime may
  end its stream to spread load over new pods.

Errors: :class:`StreamError` (the server refused: HTTP status and body), and
:class:`StreamDropped` (a :class:`ConnectionError`: could not connect, or the stream broke)
with its kinds :class:`DeadLink` and :class:`BadStream`. httpx's own exceptions never leak.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import logging
import os
import random
import re
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import httpx
import msgspec

from .identity.signing import signed_headers

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_RETRY_MS",
    "BadStream",
    "DeadLink",
    "KernelEventStream",
    "RetryNotice",
    "SSEEvent",
    "SSEParser",
    "StreamDropped",
    "StreamError",
    "StreamEventData",
    "backoff",
    "decode_data",
    "open_stream",
]

log = logging.getLogger(__name__)

#: seconds without a byte (event or ``: ping``) before a link counts as dead: three of the
#: gateway's default 15 s ping intervals
DEFAULT_IDLE_TIMEOUT: Final = 45.0
#: milliseconds to wait before a reconnect when the server named no time (WHATWG leaves the
#: initial reconnection time to the client)
DEFAULT_RETRY_MS: Final = 1000
#: what the server may ask for as a reconnection time is clamped to this range (ms): 0 would
#: let a server that closes at once spin the client, hours would strand it
_MIN_RETRY_MS: Final = 100
_MAX_RETRY_MS: Final = 600_000
#: the largest line or event (characters) a parser accepts
MAX_LINE: Final = 1 << 20
#: the largest refusal body kept on a :class:`StreamError`
_MAX_ERROR_BODY: Final = 64 * 1024
#: up to this fraction of the delay is added at random, so clients spread out
_JITTER: Final = 0.5
#: a connection open this long (seconds), or one that delivered an event, was a success: the
#: next reconnect starts again from the server's delay rather than a doubled one
_HEALTHY_AFTER: Final = 5.0
_STREAM_PATH: Final = "/stream/kernel/_/events"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event: its type (``"message"`` when none), data, and last event id."""

    event: str
    data: str
    id: str | None


class StreamEventData(msgspec.Struct, frozen=True):
    """The ``data`` of a kernel event, typed."""

    sessionId: str
    ownerAccessKey: str
    reason: str
    result: str | None = None


_data_decoder: Final = msgspec.json.Decoder(StreamEventData)


def decode_data(event: SSEEvent) -> StreamEventData:
    """``event.data`` as a kernel event's fields; ``msgspec.DecodeError`` if it is not one."""
    return _data_decoder.decode(event.data)


class StreamError(Exception):
    """The server refused the stream; ``status`` and ``body`` say why, ``retry_after``
    (seconds, or None) is its ``Retry-After``."""

    def __init__(self, status: int, body: bytes, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {body[:300].decode(errors='replace')}")
        self.status = status
        self.body = body
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """A 5xx or a 429: worth trying again later. Anything else will not change."""
        return self.status >= 500 or self.status == 429


class StreamDropped(ConnectionError):
    """No stream: the connection could not be made, or broke before the stream's end."""


class DeadLink(StreamDropped):
    """The connection stayed open but nothing came for longer than the idle timeout."""


class BadStream(StreamDropped):
    """What came is not a usable event stream (not HTTP, a line over the size limit)."""


def _new_utf8() -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


#: an SSE line ends at CRLF, CR or LF (and nothing else: not str.splitlines' other breaks)
_LINE_END: Final = re.compile(r"\r\n|\r|\n")


@dataclass
class SSEParser:
    """Incremental parser; :meth:`feed` returns the events completed by ``chunk``.

    ``last_event_id`` is the id the next event carries (WHATWG's last event ID buffer),
    ``retry_ms`` the server's last valid ``retry:``, ``comments`` the comment lines seen."""

    last_event_id: str | None = None
    retry_ms: int | None = None
    comments: int = 0
    max_line: int = MAX_LINE
    _utf8: codecs.IncrementalDecoder = field(default_factory=_new_utf8, repr=False)
    _started: bool = False
    _after_cr: bool = False  # the last chunk ended in CR: a LF first in the next is its pair
    _partial: list[str] = field(default_factory=list, repr=False)  # the unfinished line
    _partial_size: int = 0
    _event_type: str = ""
    _data: list[str] = field(default_factory=list, repr=False)
    _event_size: int = 0  # characters of the event not yet dispatched

    def feed(self, chunk: bytes | str) -> list[SSEEvent]:
        """Raises :class:`BadStream` when a line or an event grows past ``max_line``."""
        text = self._utf8.decode(chunk) if isinstance(chunk, bytes) else chunk
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._after_cr and text:
            self._after_cr = False
            text = text.removeprefix("\n")
        if not text:
            return []
        self._after_cr = text.endswith("\r")
        parts = _LINE_END.split(text)
        rest = parts.pop()  # after the last line end: the start of an unfinished line
        events: list[SSEEvent] = []
        for part in parts:
            if self._partial:
                part = "".join(self._partial) + part
                self._partial.clear()
                self._partial_size = 0
            if len(part) > self.max_line:
                raise BadStream(f"a line over {self.max_line} characters")
            event = self._line(part)
            if event is not None:
                events.append(event)
        if rest:
            self._partial.append(rest)
            self._partial_size += len(rest)
            if self._partial_size > self.max_line:
                raise BadStream(f"a line over {self.max_line} characters")
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:  # dispatch
            has_data, data = bool(self._data), "".join(self._data)
            event_type = self._event_type or "message"
            self._data, self._event_type, self._event_size = [], "", 0
            if not has_data:
                return None  # WHATWG: an empty data buffer dispatches nothing
            return SSEEvent(event_type, data[:-1], self.last_event_id)
        if line.startswith(":"):
            self.comments += 1
            return None
        self._event_size += len(line)
        if self._event_size > self.max_line:
            raise BadStream(f"an event over {self.max_line} characters")
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value + "\n")
        elif name == "event":
            self._event_type = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self.retry_ms = int(value)
        return None


def _stream_url(url: str) -> str:
    """``url`` itself, or the v4 stream path on it when it names only a host."""
    parts = httpx.URL(url)
    if parts.scheme not in ("http", "https") or not parts.host:
        raise ValueError(f"give an http:// or https:// URL, got {url!r}")
    return str(parts.copy_with(path=_STREAM_PATH)) if parts.path in ("", "/") else url


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isascii() and value.isdigit() else None


def _why(exc: BaseException) -> str:
    """What went wrong, in the words of the deepest OS error behind ``exc`` when there is one
    ("Connection refused" rather than httpx's "All connection attempts failed")."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno)
        if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
            cause = cause.exceptions[0]
        else:
            cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One verifying context (system CAs via certifi, ``SSL_CERT_FILE``) for every client:
    building one costs ~20 ms of CPU, and a fleet of consumers opens many clients."""
    return httpx.create_ssl_context()


def _new_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=_ssl_context())


def _timeout(idle_timeout: float | None, connect_timeout: float) -> httpx.Timeout:
    # httpx's read timeout bounds each wait for bytes: exactly "silent for idle_timeout".
    return httpx.Timeout(connect_timeout, read=idle_timeout)


@contextlib.asynccontextmanager
async def open_stream(
    url: str,
    *,
    access_key: str | None = None,
    secret_key: str | None = None,
    params: Mapping[str, str] | None = None,
    last_event_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
    connect_timeout: float = 10.0,
    client: httpx.AsyncClient | None = None,
) -> AsyncIterator[tuple[SSEParser, AsyncIterator[SSEEvent]]]:
    """One stream, no reconnect: ``async with open_stream(...) as (parser, events)``.

    ``url`` is the gateway's base (``http://host:port``) or a full stream URL; the request is
    signed when both keys are given. ``idle_timeout`` seconds without a byte (None: wait
    forever) end the events with :class:`DeadLink`. Raises :class:`StreamError` for a
    non-200 answer (or a 200 that is not ``text/event-stream``), :class:`StreamDropped` when
    the connection fails, :class:`BadStream` for garbage; ``client`` is reused if given."""
    target_url = _stream_url(url)
    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(_new_client())
        request_headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if last_event_id:
            request_headers["Last-Event-ID"] = last_event_id
        request_headers.update(headers or {})
        request = client.build_request(
            "GET",
            target_url,
            params=dict(params) if params else None,
            headers=request_headers,
            timeout=_timeout(idle_timeout, connect_timeout),
        )
        if access_key and secret_key:
            # Signed as sent: the target and Host exactly as httpx will write them.
            target = request.url.raw_path.decode("ascii")
            request.headers.update(
                signed_headers("GET", target, request.headers["host"], access_key, secret_key)
            )
        try:
            response = await client.send(request, stream=True)
        except httpx.ReadTimeout as exc:
            raise DeadLink(f"no answer from {target_url} within {idle_timeout} s") from exc
        except httpx.RemoteProtocolError as exc:  # closed at once, or not HTTP at all
            raise StreamDropped(f"{target_url} broke the exchange: {_why(exc)}") from exc
        except httpx.TransportError as exc:
            raise StreamDropped(f"cannot connect to {target_url}: {_why(exc)}") from exc
        stack.push_async_callback(response.aclose)
        if response.status_code != 200:
            body = b""
            with contextlib.suppress(httpx.HTTPError):
                async for data in response.aiter_bytes():
                    body += data
                    if len(body) >= _MAX_ERROR_BODY:
                        break
            raise StreamError(response.status_code, body[:_MAX_ERROR_BODY], _retry_after(response))
        media_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "text/event-stream":
            raise StreamError(200, f"not an event stream: Content-Type {media_type!r}".encode())
        parser = SSEParser(last_event_id=last_event_id)

        async def events() -> AsyncGenerator[SSEEvent, None]:
            try:
                async for data in response.aiter_bytes():
                    for event in parser.feed(data):
                        yield event
            except httpx.ReadTimeout as exc:
                raise DeadLink(f"nothing from {target_url} for {idle_timeout} s") from exc
            except httpx.TransportError as exc:  # reset, closed mid-chunk, bad framing
                raise StreamDropped(f"the stream from {target_url} broke: {_why(exc)}") from exc
            except httpx.DecodingError as exc:
                raise BadStream(f"{target_url} sent an undecodable body: {_why(exc)}") from exc

        reading = events()

        async def stop_reading() -> None:
            # Before the response closes under it. A generator another task is iterating
            # cannot be closed from here ("already running"): it ends with the response.
            with contextlib.suppress(RuntimeError):
                await reading.aclose()

        stack.push_async_callback(stop_reading)
        yield parser, reading


@dataclass(frozen=True, slots=True)
class RetryNotice:
    """Why :class:`KernelEventStream` reconnects and when: ``error`` (None after a clean
    ``server_close`` or end), ``delay`` seconds, ``attempt`` (consecutive failures, 0 after
    a stream that worked), ``url`` it will try next."""

    error: Exception | None
    delay: float
    attempt: int
    url: str


def _close_hint(data: str) -> int | None:
    """``server_close``'s ``retry`` (ms), or None when absent or not a count."""
    with contextlib.suppress(msgspec.DecodeError):
        body = msgspec.json.decode(data)
        retry = body.get("retry") if isinstance(body, dict) else None
        if isinstance(retry, int) and not isinstance(retry, bool) and retry >= 0:
            return retry
    return None


def backoff(base_ms: int, failures: int, max_backoff: float) -> float:
    """Seconds before the next attempt: ``base_ms`` (what the server asked for) doubled per
    consecutive failure beyond the first, at most ``max_backoff`` (or ``base_ms`` if it is
    longer: the server's ask is a floor), then up to 50 % more at random. The server's ask
    is clamped to 0.1 s - 10 min first."""
    base = min(max(base_ms, _MIN_RETRY_MS), _MAX_RETRY_MS) / 1000
    ceiling = max(max_backoff, base)
    delay = min(ceiling, base * 2.0 ** min(max(failures - 1, 0), 30))
    return delay * (1 + random.random() * _JITTER)


class KernelEventStream:
    """Every kernel event the keypair may see, across reconnects, each exactly once (or a
    ``history_truncated`` notice where history cannot prove it).

    >>> async for event in KernelEventStream(url, access_key=ak, secret_key=sk):
    ...     print(event.event, decode_data(event))

    ``url`` may be a list of replicas (or load balancers); reconnects go round it. Refusals
    that will not change (4xx but 429) raise :class:`StreamError`. ``on_retry`` hears of
    each reconnect before its wait (``gateway tail`` prints it); ``idle_timeout`` seconds of
    silence count as a dead link (set it above the server's ping interval; None: never).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        access_key: str,
        secret_key: str,
        params: Mapping[str, str] | None = None,
        last_event_id: str | None = None,
        max_backoff: float = 10.0,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        include_control: bool = False,
        on_retry: Callable[[RetryNotice], None] | None = None,
    ) -> None:
        self.urls = [url] if isinstance(url, str) else list(url)
        if not self.urls:
            raise ValueError("give one or more http:// URLs")
        for one in self.urls:
            _stream_url(one)  # ValueError naming the bad one
        self.url = self.urls[0]
        self.access_key = access_key
        self.secret_key = secret_key
        #: resumable=1: this client resumes, so the server may end its stream to rebalance
        self.params = {"resumable": "1", **(params or {})}
        self.last_event_id = last_event_id
        self.max_backoff = max_backoff
        self.idle_timeout = idle_timeout
        self.include_control = include_control
        self.on_retry = on_retry
        #: the server's reconnection time (ms), from its ``retry:`` field
        self.retry_ms = DEFAULT_RETRY_MS
        self.reconnects = 0
        self.connected = False

    async def __aiter__(self) -> AsyncIterator[SSEEvent]:
        failures = 0
        async with _new_client() as client:
            while True:
                hint_ms: int | None = None
                error: Exception | None = None
                healthy = False
                opened = time.monotonic()
                current: SSEParser | None = None
                try:
                    async with open_stream(
                        self.url,
                        access_key=self.access_key,
                        secret_key=self.secret_key,
                        params=self.params,
                        last_event_id=self.last_event_id,
                        idle_timeout=self.idle_timeout,
                        client=client,
                    ) as (current, events):
                        self.connected = True
                        async for event in events:
                            if event.event == "server_close":
                                hint_ms = _close_hint(event.data)
                                if self.include_control:
                                    yield event
                                break
                            if event.id:
                                self.last_event_id = event.id
                            # a gap notice is never hidden: it is what "nothing lost" rests on
                            if (
                                event.event.startswith(("kernel_", "session_"))
                                or event.event == "history_truncated"
                            ):
                                healthy = True
                                yield event
                            elif self.include_control:
                                yield event
                except StreamError as exc:
                    if not exc.retryable:
                        raise
                    error = exc
                    if exc.retry_after is not None:
                        hint_ms = int(exc.retry_after * 1000)
                except StreamDropped as exc:
                    error = exc
                finally:
                    self.connected = False
                    if current is not None and current.retry_ms is not None:
                        self.retry_ms = current.retry_ms  # even from a stream with no event
                if healthy or (error is None and time.monotonic() - opened >= _HEALTHY_AFTER):
                    failures = 0
                else:
                    failures += 1
                self.reconnects += 1
                # Any replica resumes any client: try the next one (after a server_close,
                # the one that closed is likely draining).
                self.url = self.urls[self.reconnects % len(self.urls)]
                delay = backoff(
                    hint_ms if hint_ms is not None else self.retry_ms, failures, self.max_backoff
                )
                log.info(
                    "stream ended (%s); reconnecting to %s in %.1f s after %s",
                    error or "closed by the server",
                    self.url,
                    delay,
                    self.last_event_id,
                )
                if self.on_retry is not None:
                    self.on_retry(RetryNotice(error, delay, failures, self.url))
                await asyncio.sleep(delay)
