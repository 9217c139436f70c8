"""Small real HTTP servers (asyncio raw sockets on 127.0.0.1) that misbehave on purpose, for
testing the shipped client: they split UTF-8 across TCP writes, freeze mid-stream, ask for a
reconnection time, close at once, or send garbage. Each records every request it read."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

__all__ = ["SSE_HEAD", "Hostile", "Visit", "chunked", "hostile_server", "send_slowly"]

#: a 200 event-stream head, chunked as the gateway's (uvicorn's) is
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)


def chunked(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk."""
    return b"%x\r\n%b\r\n" % (len(data), data)


async def send_slowly(writer: asyncio.StreamWriter, body: bytes, piece: int = 1) -> None:
    """``body`` as chunks of ``piece`` bytes, each its own TCP write (TCP_NODELAY and a pause
    between writes, so the client reads them apart)."""
    for i in range(0, len(body), piece):
        writer.write(chunked(body[i : i + piece]))
        await writer.drain()
        await asyncio.sleep(0.001)


@dataclass
class Visit:
    """One connection: when it came (monotonic seconds) and the request head it sent."""

    at: float
    head: dict[str, str]
    target: str


Handler = Callable[[Visit, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Hostile:
    url: str
    visits: list[Visit] = field(default_factory=list)

    def gaps(self) -> list[float]:
        """Seconds between consecutive connections."""
        return [b.at - a.at for a, b in zip(self.visits, self.visits[1:], strict=False)]


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    first, *lines = raw.decode("latin-1").split("\r\n")
    head = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            head[name.strip().lower()] = value.strip()
    return first.split(" ")[1], head


@contextlib.asynccontextmanager
async def hostile_server(handler: Handler, *, read_request: bool = True) -> AsyncIterator[Hostile]:
    """Serve ``handler`` on a free loopback port. The handler owns the connection while it
    runs (it is closed after); at exit every handler still running is stopped, and the
    connection tasks end normally (a cancelled one makes asyncio log an error)."""
    serving: set[asyncio.Task[None]] = set()
    stop = asyncio.Event()
    hostile = Hostile("")

    async def converse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target, head = await _read_head(reader) if read_request else ("", {})
        visit = Visit(time.monotonic(), head, target)
        hostile.visits.append(visit)
        await handler(visit, reader, writer)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        serving.add(task)
        work = asyncio.ensure_future(converse(reader, writer))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for part in (work, stopping):
                part.cancel()
            # the handler's own failures (the client went away) are part of the test
            await asyncio.gather(work, stopping, return_exceptions=True)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            serving.discard(task)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hostile.url = f"http://127.0.0.1:{port}"
    try:
        yield hostile
    finally:
        server.close()
        stop.set()
        if serving:
            await asyncio.wait(set(serving), timeout=5)
        await server.wait_closed()
