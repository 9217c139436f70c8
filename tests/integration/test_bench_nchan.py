"""The bench's peer runs: nchan (bench.nchan) on a private redis-server, a few SSE
subscribers, one event published the bench's way reaches every one, through Redis.

Needs nginx with nchan's module (``scripts/install --with-bench``); skipped without it (CI has
no nchan)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import redis

from bench.nchan import NchanSink, missing, nchan_servers, subscribe_request
from bench.ratepub import RatePublisher, session_name
from devtools.localredis import PrivateRedis

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))

KEY = b'"reason":"t='


def _read_until(sock: socket.socket, marker: bytes, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    seen = b""
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {marker!r} within {timeout}s; read {seen!r}")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed before {marker!r}; read {seen!r}")
        seen += chunk
    return seen


def test_one_published_event_reaches_every_subscriber_through_redis(tmp_path: Path) -> None:
    channel = session_name(0)  # every event of a broadcast scenario names this session
    with PrivateRedis() as server, nchan_servers(server.url, tmp_path) as (nchan,):
        assert nchan.cpu() >= 0 and nchan.rss() > 0 and len(set(nchan.pids)) == 2
        subscribers = []
        try:
            for _ in range(3):
                sock = socket.create_connection(("127.0.0.1", nchan.port), timeout=5)
                subscribers.append(sock)
                sock.sendall(subscribe_request(nchan.port, channel))
                head = _read_until(sock, b"\r\n\r\n", timeout=5)
                assert head.startswith(b"HTTP/1.1 200"), head
                assert b"text/event-stream" in head
            with RatePublisher(server.url, sink=NchanSink(nchan.port)) as pub:
                assert pub.run(rate=10.0, seconds=0.1) == 1
            for sock in subscribers:
                seen = _read_until(sock, KEY, timeout=5)
                frame = seen[seen.rindex(b"event: ") :]
                assert frame.startswith(b"event: kernel_started\n"), seen
                assert b'data: {"sessionId":"s00000","ownerAccessKey":' in frame
        finally:
            for sock in subscribers:
                sock.close()
        # nchan's Redis mode: the message went through the bench's redis-server
        with redis.Redis.from_url(server.url) as client:
            assert any(channel.encode() in key for key in client.keys("*")), client.keys("*")
