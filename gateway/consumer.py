"""A consumer of the event stream: signs with a keypair, parses SSE, resumes by last id.

* :class:`SSEParser` follows the WHATWG "event stream interpretation" algorithm (what a
  browser's EventSource does): ``\\r\\n``, ``\\r`` or ``\\n`` line ends, ``:`` comments, a
  leading space stripped from values, ``data`` lines joined with ``\\n``, ``id`` kept across
  events, an ``id`` containing NUL ignored, ``retry`` only when all digits.
* :func:`open_stream` speaks HTTP/1.1 over an asyncio connection (no client library needed)
  and yields parsed events; :class:`KernelEventStream` reconnects with ``Last-Event-ID`` after
  a ``server_close``, a dropped connection or a 5xx, so a consumer sees every event once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlencode, urlsplit

import msgspec

from .identity.signing import signed_headers

__all__ = [
    "KernelEventStream",
    "SSEEvent",
    "SSEParser",
    "StreamError",
    "StreamEventData",
    "decode_data",
    "open_stream",
]

log = logging.getLogger(__name__)

_MAX_HEADER: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class SSEEvent:
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
    return _data_decoder.decode(event.data)


@dataclass
class SSEParser:
    """Incremental parser; :meth:`feed` returns the events completed by ``chunk``."""

    last_event_id: str | None = None
    retry_ms: int | None = None
    comments: int = 0
    _buffer: str = ""
    _data: list[str] = field(default_factory=list)
    _event: str = ""
    _pending_cr: bool = False

    def feed(self, chunk: bytes | str) -> list[SSEEvent]:
        text = chunk.decode("utf-8", errors="replace") if isinstance(chunk, bytes) else chunk
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]  # the \n of a \r\n split across chunks
        self._pending_cr = False
        buffer = self._buffer + text
        events: list[SSEEvent] = []
        start = 0
        length = len(buffer)
        while start < length:
            cr = buffer.find("\r", start)
            lf = buffer.find("\n", start)
            if cr == -1 and lf == -1:
                break
            if cr != -1 and (lf == -1 or cr < lf):
                end, nxt = cr, cr + 1
                if nxt < length and buffer[nxt] == "\n":
                    nxt += 1
                elif nxt == length:
                    self._pending_cr = True
            else:
                end, nxt = lf, lf + 1
            event = self._line(buffer[start:end])
            if event is not None:
                events.append(event)
            start = nxt
        self._buffer = buffer[start:]
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self.retry_ms = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = SSEEvent(self._event or "message", "\n".join(self._data), self.last_event_id)
        self._data = []
        self._event = ""
        return event


class StreamError(Exception):
    """The server refused the stream; ``status`` and ``body`` say why."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:300].decode(errors='replace')}")
        self.status = status
        self.body = body


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > _MAX_HEADER:
        raise StreamError(0, b"response header too large")
    lines = head.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise ConnectionError(f"not an HTTP response: {lines[0][:80]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def _body_chunks(
    reader: asyncio.StreamReader, headers: Mapping[str, str]
) -> AsyncIterator[bytes]:
    if headers.get("transfer-encoding", "").lower() != "chunked":
        length = headers.get("content-length")
        if length is not None and length.isdigit():  # a refusal on a keep-alive connection
            yield await reader.readexactly(int(length))
            return
        while data := await reader.read(65536):
            yield data
        return
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0], 16)
        except ValueError:
            raise ConnectionError(f"bad chunk size line {size_line[:40]!r}") from None
        if size == 0:
            await reader.readuntil(b"\r\n")
            return
        data = await reader.readexactly(size + 2)
        yield data[:-2]


@contextlib.asynccontextmanager
async def open_stream(
    url: str,
    *,
    access_key: str | None = None,
    secret_key: str | None = None,
    params: Mapping[str, str] | None = None,
    last_event_id: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[tuple[SSEParser, AsyncIterator[SSEEvent]]]:
    """One stream, no reconnect: ``async with open_stream(...) as (parser, events)``.

    ``url`` is the gateway's base (``http://host:port``) or a full stream URL. Raises
    :class:`StreamError` for a non-200 answer."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only http:// URLs are supported here, got {url!r}")
    host = parts.netloc
    path = parts.path if parts.path not in ("", "/") else "/stream/kernel/_/events"
    target = path + ("?" + urlencode(params) if params else "")
    request_headers = {"Host": host, "Accept": "text/event-stream"}
    if access_key and secret_key:
        request_headers.update(signed_headers("GET", target, host, access_key, secret_key))
    if last_event_id:
        request_headers["Last-Event-ID"] = last_event_id
    request_headers.update(headers or {})
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in request_headers.items())
        writer.write(f"GET {target} HTTP/1.1\r\n{head}\r\n".encode("latin-1"))
        status, response_headers = await _read_head(reader)
        if status != 200:
            body = b"".join([chunk async for chunk in _body_chunks(reader, response_headers)])
            raise StreamError(status, body)
        parser = SSEParser(last_event_id=last_event_id)

        async def events() -> AsyncIterator[SSEEvent]:
            async for chunk in _body_chunks(reader, response_headers):
                for event in parser.feed(chunk):
                    yield event

        yield parser, events()
    finally:
        writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await writer.wait_closed()


class KernelEventStream:
    """Every kernel event the keypair may see, across reconnects, each exactly once.

    >>> async for event in KernelEventStream(url, access_key=ak, secret_key=sk):
    ...     print(event.event, decode_data(event))

    ``url`` may be a list of replicas (or load balancers); reconnects go round it.
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
        include_control: bool = False,
    ) -> None:
        self.urls = [url] if isinstance(url, str) else list(url)
        if not self.urls or not all(u.startswith("http://") for u in self.urls):
            raise ValueError(f"give one or more http:// URLs, got {url!r}")
        self.url = self.urls[0]
        self.access_key = access_key
        self.secret_key = secret_key
        self.params = dict(params or {})
        self.last_event_id = last_event_id
        self.max_backoff = max_backoff
        self.include_control = include_control
        self.reconnects = 0
        self.connected = False

    async def __aiter__(self) -> AsyncIterator[SSEEvent]:
        failures = 0
        while True:
            retry_ms = 1000
            try:
                async with open_stream(
                    self.url,
                    access_key=self.access_key,
                    secret_key=self.secret_key,
                    params=self.params,
                    last_event_id=self.last_event_id,
                ) as (parser, events):
                    self.connected = True
                    failures = 0
                    async for event in events:
                        retry_ms = parser.retry_ms or retry_ms
                        if event.event == "server_close":
                            with contextlib.suppress(msgspec.DecodeError):
                                retry_ms = int(msgspec.json.decode(event.data).get("retry", 0))
                            if self.include_control:
                                yield event
                            break
                        if event.id is not None:
                            self.last_event_id = event.id
                        # a gap notice is never hidden: it is what "nothing lost" rests on
                        if (
                            event.event.startswith(("kernel_", "session_"))
                            or event.event == "history_truncated"
                            or self.include_control
                        ):
                            yield event
            except StreamError as exc:
                if exc.status < 500 and exc.status != 429:
                    raise
                failures += 1
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                log.info("stream dropped (%s); resuming after %s", exc, self.last_event_id)
                failures += 1
            self.connected = False
            self.reconnects += 1
            # Any replica resumes any client: try the next one (after a server_close, the
            # one that closed is likely draining).
            self.url = self.urls[self.reconnects % len(self.urls)]
            delay = min(self.max_backoff, retry_ms / 1000 * (2 ** min(failures, 6)))
            await asyncio.sleep(delay * (0.5 + random.random() / 2) if failures else 0.05)
