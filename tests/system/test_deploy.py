"""deploy/: real nginx and haproxy on loopback, with the shipped configs.

The load balancer configs run for real with the shipped files (nginx reads deploy/nginx/
nginx.conf itself; only its two include files, the upstream list and the listen address, are
written here) in front of tiny stand-in replicas. A stand-in streams ``text/event-stream``
the way uvicorn does (chunked) but without ``X-Accel-Buffering: no``, so only the proxy's own
config can keep events from being held back; it echoes the Host header and the request target
it received, which Backend.AI's HMAC signature covers byte for byte. (The files
read, not run: tests/integration/test_deploy_files.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from tests.support.deploy import HAPROXY_CFG, NGINX_DIR
from tests.support.proxies import (
    HAPROXY,
    Proxy,
    loopback_upstreams,
    needs_haproxy,
    needs_nginx,
    nginx_args,
    nginx_prefix,
    run_haproxy,
    run_nginx,
)

STREAM = "/stream/kernel/_/events?sessionId=*&group=*"
# Percent-escapes and a second path: the proxy must not decode or re-encode either.
STREAM_V4 = "/v4/stream/kernel/%5F/events?sessionId=mysession-01&ownerAccessKey=AKIA%2Dx&group=*"
HOST = "events.example.test:8443"


# -- stand-in replicas ---------------------------------------------------------------------------


@dataclass
class Seen:
    target: str
    headers: dict[str, str]


@dataclass(eq=False)
class StandIn:
    """A tiny HTTP/1.1 server in place of a gateway replica.

    ``GET /ready`` answers 200 (haproxy's checks). Any other request is recorded; with
    ``status`` 200 it gets an event stream: one ``first`` event echoing the target and Host
    received, then nothing until :meth:`release` (or 5 s), then an ``end`` event. With
    ``flood``, it writes that many bytes of events after the first one, as fast as the
    connection takes them (counted in ``written``). With another status (503: a draining
    replica) it gets that status and a short body.
    """

    name: str
    status: int = 200
    hold: bool = True
    flood: int = 0
    written: int = 0
    seen: list[Seen] = field(default_factory=list)
    ended: int = 0
    port: int = 0
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None
    _open: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def release(self) -> None:
        """Let every held stream finish; :meth:`hold_again` holds the next ones."""
        self._release.set()

    def hold_again(self) -> None:
        self._release.clear()

    async def __aenter__(self) -> StandIn:
        if not self.hold:
            self._release.set()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._release.set()
        assert self._server is not None
        self._server.close()
        with anyio.fail_after(5):
            await self._server.wait_closed()
            while self._open:
                await asyncio.sleep(0.01)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        try:
            await self._respond(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the proxy hung up (or checked the port and left): nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._open -= 1

    async def _respond(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        request_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        _method, target, _version = request_line.split(" ", 2)
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if target == "/ready":
            writer.write(_plain(200, b"ready"))
            await writer.drain()
            return
        self.seen.append(Seen(target, headers))
        if self.status != 200:
            writer.write(_plain(self.status, b"draining", b"Retry-After: 1\r\n"))
            await writer.drain()
            return
        # What uvicorn sends, minus X-Accel-Buffering: no (which would switch nginx's
        # buffering off by itself and hide a config that buffers).
        writer.write(
            b"HTTP/1.1 200 OK\r\n"
            b"Content-Type: text/event-stream; charset=utf-8\r\n"
            b"Cache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n"
        )
        echo = {"upstream": self.name, "target": target, "host": headers.get("host")}
        writer.write(_chunk(f"event: first\ndata: {json.dumps(echo)}\n\n".encode()))
        await writer.drain()
        if self.flood:
            block = b"event: filler\ndata: " + b"x" * 1000 + b"\n\n"
            block *= 64
            while self.written < self.flood:
                writer.write(_chunk(block))
                await writer.drain()
                self.written += len(block)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._release.wait(), 5)
        self.ended += 1
        writer.write(_chunk(b"event: end\ndata: {}\n\n") + b"0\r\n\r\n")
        await writer.drain()


def _plain(status: int, body: bytes, extra: bytes = b"") -> bytes:
    reason = {200: b"OK", 503: b"Service Unavailable"}.get(status, b"Status")
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n%s\r\n%s" % (status, reason, len(body), extra, body)
    )


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@contextlib.contextmanager
def dead_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening, held for the test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- a raw HTTP client: sends the request target byte for byte ------------------------------------


class RawResponse:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self._text = ""
        self._done = False

    async def read_head(self) -> None:
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        self.status = int(status_line.split(" ", 2)[1])
        for line in lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    async def _more(self) -> None:
        """Read the next piece of the body into the text buffer; ``_done`` at its end."""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await self._reader.readexactly(size + 2)
            if size == 0:
                self._done = True
            self._text += data[:-2].decode()
        elif "content-length" in self.headers:
            self._text += (
                await self._reader.readexactly(int(self.headers["content-length"]))
            ).decode()
            self._done = True
        else:
            data = await self._reader.read(65536)
            self._done = not data
            self._text += data.decode()

    async def next_event(self) -> dict[str, str] | None:
        """The next SSE event's fields (comments skipped), or None at the end of the body."""
        while True:
            while "\n\n" not in self._text:
                if self._done:
                    return None
                await self._more()
            block, self._text = self._text.split("\n\n", 1)
            event: dict[str, str] = {}
            for line in block.split("\n"):
                if line and not line.startswith(":"):
                    name, _, value = line.partition(":")
                    event[name] = value.removeprefix(" ")
            if event:
                return event

    async def body(self) -> str:
        while not self._done:
            await self._more()
        text, self._text = self._text, ""
        return text

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


@contextlib.asynccontextmanager
async def request(port: int, target: str, host: str = HOST) -> AsyncIterator[RawResponse]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    response = RawResponse(reader, writer)
    try:
        writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
            "Connection: close\r\n\r\n".encode("latin-1")
        )
        await writer.drain()
        await response.read_head()
        yield response
    finally:
        await response.aclose()


# -- live checks, shared by nginx and haproxy ----------------------------------------------------


async def check_streams_unbuffered(proxy: Proxy, first: StandIn, second: StandIn) -> None:
    """(a) events arrive one by one while the replica holds the stream open; (b) the replica
    sees the client's Host and request target exactly as sent, and X-Forwarded-For."""
    for target in (STREAM, STREAM_V4):
        ended_before = first.ended + second.ended
        async with request(proxy.port, target) as response:
            assert response.status == 200, await response.body()
            assert response.headers["content-type"].startswith("text/event-stream")
            with anyio.fail_after(3):
                event = await response.next_event()
            # The replica has not finished this stream: the proxy passed the event on alone.
            assert first.ended + second.ended == ended_before
            assert event is not None and event["event"] == "first"
            echo = json.loads(event["data"])
            assert echo["target"] == target
            assert echo["host"] == HOST
            for stand_in in (first, second):
                stand_in.release()
            with anyio.fail_after(5):
                last = await response.next_event()
                assert last is not None and last["event"] == "end"
                assert await response.next_event() is None
            first.hold_again()
            second.hold_again()
    seen = first.seen + second.seen
    assert [s.target for s in seen] == [STREAM, STREAM_V4]
    assert all(s.headers["host"] == HOST for s in seen)
    assert all(s.headers["x-forwarded-for"].endswith("127.0.0.1") for s in seen)


def in_flight_allowance() -> int:
    """What the kernel may hold between a replica and a stalled client: two loopback hops,
    four socket buffers at their autotuning maximum, plus slack for the proxy's own buffer."""
    try:
        rmem = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
        wmem = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        rmem = wmem = 16 << 20
    return 2 * (rmem + wmem) + (8 << 20)


async def check_backpressure(proxy: Proxy, flooding: StandIn) -> None:
    """A client that stops reading stalls the replica's writes (the proxy holds no more than a
    small buffer), so the gateway's slow-consumer eviction works behind the proxy. A buffering
    proxy would swallow the whole stream into memory or temp files instead."""
    async with request(proxy.port, STREAM) as response:
        assert response.status == 200, await response.body()
        with anyio.fail_after(3):
            event = await response.next_event()
        assert event is not None and event["event"] == "first"
        # Read nothing more: wait until the replica's writes stall (or it wrote everything).
        last, since = -1, time.monotonic()
        with anyio.fail_after(15):
            while flooding.written < flooding.flood and time.monotonic() - since < 0.5:
                await anyio.sleep(0.05)
                if flooding.written != last:
                    last, since = flooding.written, time.monotonic()
    assert flooding.written < in_flight_allowance() < flooding.flood


async def check_skips_dead_and_draining(proxy: Proxy, draining: StandIn, live: StandIn) -> None:
    """(c) a refused connection and a 503 (draining) are retried on the next replica."""
    for _ in range(6):
        async with request(proxy.port, STREAM) as response:
            assert response.status == 200, await response.body()
            with anyio.fail_after(5):
                event = await response.next_event()
            assert event is not None and json.loads(event["data"])["upstream"] == live.name
            with anyio.fail_after(5):
                while await response.next_event() is not None:
                    pass
    assert draining.seen, "the draining replica was never tried"
    assert len(live.seen) == 6


# -- nginx ---------------------------------------------------------------------------------------


@needs_nginx
def test_nginx_config_is_valid(tmp_path: Path) -> None:
    compose_listen = (NGINX_DIR / "listen.compose.conf").read_text()
    prefix = nginx_prefix(tmp_path, loopback_upstreams(["127.0.0.1:1"] * 3), compose_listen)
    result = subprocess.run(
        nginx_args(prefix, "-t"), capture_output=True, text=True, timeout=10, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    assert "[warn]" not in result.stderr and "[emerg]" not in result.stderr, result.stderr


@needs_nginx
@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_nginx_streams_events_unbuffered_with_host_and_target_as_sent(
    tmp_path: Path,
) -> None:
    async with StandIn("a") as a, StandIn("b") as b:
        async with run_nginx(tmp_path, [a.address, b.address, a.address]) as proxy:
            await check_streams_unbuffered(proxy, a, b)


@needs_nginx
@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_nginx_passes_backpressure_from_a_stalled_client(tmp_path: Path) -> None:
    async with StandIn("flood", flood=2 * in_flight_allowance()) as flooding:
        async with run_nginx(tmp_path, [flooding.address] * 3) as proxy:
            await check_backpressure(proxy, flooding)


@needs_nginx
@pytest.mark.anyio
@pytest.mark.timeout(30)
async def test_nginx_skips_dead_and_draining_replicas(tmp_path: Path) -> None:
    with dead_port() as dead:
        async with (
            StandIn("draining", status=503) as draining,
            StandIn("live", hold=False) as live,
        ):
            addresses = [f"127.0.0.1:{dead}", draining.address, live.address]
            async with run_nginx(tmp_path, addresses) as proxy:
                await check_skips_dead_and_draining(proxy, draining, live)
            log = proxy.output()
    assert "Connection refused) while connecting to upstream" in log
    assert f"127.0.0.1:{dead}" in log


# -- haproxy -------------------------------------------------------------------------------------


@needs_haproxy
def test_haproxy_config_is_valid() -> None:
    assert HAPROXY is not None
    result = subprocess.run(
        [HAPROXY, "-c", "-f", str(HAPROXY_CFG)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Configuration file is valid" in output
    # Offline the compose names do not resolve: that, and only that, is worth a warning.
    warnings = [line for line in output.splitlines() if "WARNING" in line or "ALERT" in line]
    assert all("could not resolve address" in line for line in warnings), output


@needs_haproxy
@pytest.mark.anyio
@pytest.mark.timeout(45)
async def test_haproxy_streams_unbuffered_and_skips_dead_and_draining(tmp_path: Path) -> None:
    async with StandIn("a") as a, StandIn("b") as b:
        async with run_haproxy(tmp_path, [a.address, b.address, a.address]) as proxy:
            await check_streams_unbuffered(proxy, a, b)
    with dead_port() as dead:
        async with (
            StandIn("draining", status=503) as draining,
            StandIn("live", hold=False) as live,
        ):
            addresses = [f"127.0.0.1:{dead}", draining.address, live.address]
            async with run_haproxy(tmp_path / "c", addresses) as proxy:
                await check_skips_dead_and_draining(proxy, draining, live)
    async with StandIn("flood", flood=2 * in_flight_allowance()) as flooding:
        async with run_haproxy(tmp_path / "flood", [flooding.address] * 3) as proxy:
            await check_backpressure(proxy, flooding)
