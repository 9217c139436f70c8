"""The floor server: the least a Python process can do to serve the fan-out scenarios.

    python -m bench.fanout --peer floor [--rounds N] [--scenario a25 ...]

One uvloop process with two listeners. Each connection to the stream port sends an HTTP
request; the floor answers with the headers of a chunked ``text/event-stream`` and keeps the
transport. Each line sent to the publish port (``<event name> <JSON data>``, from
:class:`FloorSink`) becomes one SSE frame, one HTTP chunk, written to every stream with one
``transport.write``: no ASGI, no Starlette, no hub, no filter, no buffer, no Redis, no
authentication. What it spends per delivery is the write system call and the loop around
it, measured with the same C load client, clients, rate and run as the gateway, so the
gateway's CPU per delivery over the floor's is what everything the gateway adds costs.
``bench.baseline``'s loops measure the same write without a server around it, to clients
that do not read.

Broadcast and idle scenarios only (every frame goes to every stream)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import uvloop

from devtools.localredis import free_port
from publisher.schema import KernelEvent

from .nchan import event_data

__all__ = ["Floor", "FloorSink", "floor_servers", "stream_request"]

_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-store\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


def stream_request(port: int) -> bytes:
    """The raw request of one stream, as the load client sends it."""
    return f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


class _Stream(asyncio.Protocol):
    def __init__(self, streams: set[asyncio.Transport]) -> None:
        self._streams = streams
        self._transport: asyncio.Transport | None = None
        self._head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport

    def data_received(self, data: bytes) -> None:
        if self._head is None or self._transport is None:
            return  # a client that sends more than its request: ignored
        self._head += data
        if b"\r\n\r\n" in self._head:
            self._head = None  # type: ignore[assignment]
            self._transport.write(_HEAD)
            self._streams.add(self._transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._streams.discard(self._transport)


class _Publish(asyncio.Protocol):
    def __init__(self, streams: set[asyncio.Transport]) -> None:
        self._streams = streams
        self._pending = b""

    def data_received(self, data: bytes) -> None:
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        for line in lines:
            name, _, payload = line.partition(b" ")
            body = b"event: %b\ndata: %b\n\n" % (name, payload)
            frame = b"%x\r\n%b\r\n" % (len(body), body)
            for transport in self._streams:
                transport.write(frame)


async def _serve(port: int, publish_port: int) -> None:
    loop = asyncio.get_running_loop()
    streams: set[asyncio.Transport] = set()
    await loop.create_server(lambda: _Stream(streams), "127.0.0.1", port, backlog=4096)
    await loop.create_server(lambda: _Publish(streams), "127.0.0.1", publish_port)
    print("ready", flush=True)
    await asyncio.Event().wait()  # until SIGTERM


@dataclass
class Floor:
    """One running floor server (bench.procs.Server)."""

    name: str
    port: int
    publish_port: int
    proc: subprocess.Popen[bytes]
    ps: psutil.Process

    @property
    def pids(self) -> list[int]:
        return [self.ps.pid]

    def cpu(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def user_cpu(self) -> float:
        return float(self.ps.cpu_times().user)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def metrics(self) -> dict[str, float]:
        """No counters: the floor evicts nothing."""
        return {}


@contextlib.contextmanager
def floor_servers(log_dir: Path) -> Iterator[list[Floor]]:
    """One floor server on free loopback ports, ready; stopped on exit. A list of one, as
    :func:`bench.procs.gateways` yields."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port, publish_port = free_port(), free_port()
    log = log_dir / "floor.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.floor", str(port), str(publish_port)],
            stdout=subprocess.PIPE,
            stderr=out,
        )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the floor server did not start: {log.read_text()}")
        yield [Floor("floor", port, publish_port, proc, psutil.Process(proc.pid))]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


class FloorSink:
    """:class:`bench.ratepub.RatePublisher`'s sink for the floor: one line per event on one
    connection to its publish port (the data as the gateway's v4 stream sends it, with the
    publish time the load client reads). Sent from a thread, so a slow floor never holds the
    publisher's clock."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._lock = threading.Lock()
        self.max_backlog = 0

    def publish(self, event: KernelEvent, /) -> None:
        line = event.name.encode() + b" " + event_data(event) + b"\n"
        with self._lock:
            self._sock.sendall(line)

    def publish_many(self, events: list[KernelEvent], /) -> None:
        for event in events:
            self.publish(event)

    def close(self) -> None:
        with self._lock:
            self._sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="the fan-out floor server (bench.fanout)")
    parser.add_argument("port", type=int)
    parser.add_argument("publish_port", type=int)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(_serve(args.port, args.publish_port))


if __name__ == "__main__":
    main()
