"""A TCP proxy on loopback, in its own thread, that can freeze chosen connections: the
sockets stay open but nothing moves either way (a pub/sub connection that looks alive and
delivers nothing)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.support.redis_server import free_port


@dataclass(eq=False)
class _Link:
    seen: bytearray = field(default_factory=bytearray)  # first bytes client -> server
    frozen: bool = False


class TcpProxy:
    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self.links: list[_Link] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        #: the tasks relaying a link (only these are cancelled on close: asyncio's own task
        #: that makes a just-accepted socket a transport must run, or the socket leaks)
        self._handlers: set[asyncio.Task[None]] = set()
        #: every accepted connection's transport, from its first moment: one accepted as the
        #: proxy closes has no handler running yet (its task may be cancelled unstarted), and
        #: left open it is an unclosed socket when the loop closes (a ResourceWarning seen in CI)
        self._accepted: set[asyncio.BaseTransport] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)

    async def _start(self) -> None:
        accepted = self._accepted

        class Tracked(asyncio.StreamReaderProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                accepted.add(transport)
                super().connection_made(transport)

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Tracked(asyncio.StreamReader(), self._handle), "127.0.0.1", self.port
        )

    def freeze_where(self, marker: bytes) -> int:
        """Freeze every open link whose client sent ``marker`` (e.g. b"SUBSCRIBE")."""

        async def freeze() -> int:
            hits = [link for link in self.links if marker in link.seen]
            for link in hits:
                link.frozen = True
            return len(hits)

        return asyncio.run_coroutine_threadsafe(freeze(), self._loop).result(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        link = _Link()
        self.links.append(link)
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    if up and len(link.seen) < 4096:
                        link.seen += data
                    while link.frozen:
                        await asyncio.sleep(0.05)  # hold the bytes; the peer sees silence
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    def close(self) -> None:
        """Drop every link and stop listening (a cut); idempotent."""
        if self._loop.is_closed():
            return

        async def abort_until_quiet() -> None:
            # A cut: abort, not close (a close waits to flush what the peer has not read, and
            # the socket outlived the loop: a ResourceWarning seen under load). A connection
            # accepted just before the listener closed becomes a transport a few loop turns
            # later: abort again until a round finds nothing new.
            while True:
                seen = len(self._accepted) + len(self._writers)
                for writer in list(self._writers):
                    writer.transport.abort()
                for transport in list(self._accepted):
                    transport.abort()
                await asyncio.sleep(0.01)
                if len(self._accepted) + len(self._writers) == seen:
                    break

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            await abort_until_quiet()
            handlers = list(self._handlers)
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            await abort_until_quiet()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@contextlib.contextmanager
def tcp_proxy(target_port: int, port: int | None = None) -> Iterator[TcpProxy]:
    proxy = TcpProxy(target_port, port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.close()
