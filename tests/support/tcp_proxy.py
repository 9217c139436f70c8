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
        #: every accepted connection's transport, from its first moment: one accepted as the
        #: proxy closes has no handler running yet (its task may be cancelled unstarted), and
        #: left open it is an unclosed socket when the loop closes (a ResourceWarning seen in CI)
        self._accepted: set[asyncio.BaseTransport] = set()
        self._closing = False

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
        link = _Link()
        self.links.append(link)
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        if self._closing:  # the upstream connected after close() swept: cut it here
            up_writer.transport.abort()
            writer.transport.abort()
            return

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

        async def sweep() -> None:
            """Abort every socket until no task but this is left: each handler then ends by
            itself (its reads see the end), as do asyncio's own tasks that make accepted
            sockets transports. Counted in tasks, not time: under GIL contention a 10 ms sleep
            was not enough loop turns, and CI saw the socket left."""
            this = asyncio.current_task()
            while True:
                for link in self.links:
                    link.frozen = False  # a frozen pump holds its bytes in a sleep loop
                for writer in list(self._writers):
                    writer.transport.abort()  # abort, not close: a close waits on the peer
                for transport in list(self._accepted):
                    transport.abort()
                others = [task for task in asyncio.all_tasks() if task is not this]
                if not others:
                    return
                await asyncio.gather(*others, return_exceptions=True)

        async def stop() -> None:
            # A cut. First stop accepting but keep the server open: a socket accepted just
            # before becomes a transport in a task of asyncio's, and a transport made after
            # Server.close() fails to attach to it, leaving its socket unclosed (CPython
            # 3.11's Server._attach asserts the server is open; a ResourceWarning in whichever
            # test came next, twice in CI). A handler that connects upstream after the last
            # sweep sees _closing and cuts itself.
            self._closing = True
            loop = asyncio.get_running_loop()
            if self._server is not None:
                for sock in self._server.sockets:
                    loop.remove_reader(sock.fileno())
            await sweep()
            if self._server is not None:
                self._server.close()
            await sweep()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        # An abort closes its socket in a callback on the loop's next turn: stop after that
        # turn, not before (a callback left pending leaves its socket to the garbage
        # collector: a ResourceWarning in whichever test comes next, seen in CI).
        self._loop.call_soon_threadsafe(self._loop.call_soon, self._loop.stop)
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
