"""A replica at the edge of its capacity: a reader too slow to keep
up, and a process out of file descriptors. Real gateways, real sockets, real redis-server."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import httpx

from publisher import SyncPublisher
from tests.support.gateway_server import RunningGateway, gateway_settings
from tests.support.http import metric_value, raw_stream_request
from tests.support.identities import ROOT, session_of
from tests.support.wait import wait_until


def _evictions(gw: RunningGateway, reason: str) -> float:
    text = httpx.get(gw.base_url + "/metrics", timeout=5).text
    return metric_value(text, f'kev_evictions_total{{reason="{reason}"}}')


@contextlib.contextmanager
def _publishing(redis_url: str, per_second: int, size: int) -> Iterator[list[int]]:
    """Publish ``per_second`` events of about ``size`` bytes until the block ends."""
    stop = threading.Event()
    sent = [0]

    def run() -> None:
        ref = session_of(ROOT, "firehose")
        with SyncPublisher.from_url(redis_url) as pub:
            while not stop.is_set():
                pub.publish(ref.started("x" * size))
                sent[0] += 1
                time.sleep(1 / per_second)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield sent
    finally:
        stop.set()
        thread.join(timeout=5)


def _slow_socket(gw: RunningGateway, rcvbuf: int = 4096) -> socket.socket:
    """A stream request on a socket with a small receive buffer (set before connecting, so
    the window it advertises stays small), its response head read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", gw.settings.server.port))
    sock.sendall(raw_stream_request(gw.host, ROOT))
    head = sock.recv(256)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def test_a_reader_that_falls_behind_is_evicted(
    cast: str, start_gateway: Callable[..., RunningGateway]
) -> None:
    """Case 8: a client that reads a few bytes a second never fills our buffer or stalls a
    write (its backlog waits in the kernel's send queue behind its shut window), so neither
    ``buffer_cap`` nor ``write_deadline`` ever applied. ``max_lag`` does: the oldest
    unacknowledged byte gets older than it, the stream is evicted (``slow_reader``), while a
    client that keeps up on the same replica stays."""
    gw = start_gateway(max_lag=1.5, write_deadline=60.0, buffer_cap=8 << 20, ping_interval=0)
    slow = _slow_socket(gw)
    fast = _slow_socket(gw, rcvbuf=1 << 20)
    fast_read = [0]
    fast_done = threading.Event()

    def read_fast() -> None:
        with contextlib.suppress(OSError):
            while not fast_done.is_set() and (data := fast.recv(65536)):
                fast_read[0] += len(data)

    reader = threading.Thread(target=read_fast, daemon=True)
    reader.start()
    evicted_after = None
    with _publishing(cast, per_second=200, size=300) as sent:
        started = time.monotonic()
        while time.monotonic() - started < 12:
            assert slow.recv(16)  # a few bytes a second
            if _evictions(gw, "slow_reader"):
                evicted_after = time.monotonic() - started
                break
            time.sleep(0.25)
        published = sent[0]
    assert evicted_after is not None, "the slow reader was never evicted"
    # The connection was reset: what is left is what its own kernel already held (its
    # receive buffer), not the backlog of our send queue (over 100 KB by now).
    left = 0
    with contextlib.suppress(ConnectionResetError):
        while data := slow.recv(65536):
            left += len(data)
    fast_done.set()
    evictions = _evictions(gw, "slow_reader")
    fast.close()
    slow.close()
    reader.join(timeout=5)
    assert left < 32 * 1024, f"{left} bytes still delivered after the eviction"
    assert evictions == 1, f"{evictions} slow_reader evictions: the fast reader must stay"
    assert _evictions(gw, "write_timeout") == _evictions(gw, "slow_consumer") == 0
    assert fast_read[0] > 300 * published // 2, "the fast reader kept up"
    # max_lag 1.5 s, measured at the timer's 1 s ticks, once the window shut (~0.1 s)
    assert evicted_after < 1.5 + 4, evicted_after
    print(f"slow reader evicted {evicted_after:.2f} s after the backlog began; {left} B left")


def _nofile_limited(limit: int) -> Callable[[], None]:
    def limit_fds() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return limit_fds


def test_streams_stop_short_of_the_file_descriptor_limit(cast: str) -> None:
    """Case 6: under ``ulimit -n 256`` a replica used to accept streams until ``accept()``
    failed, then closed new connections with no HTTP answer, ``/health`` included. Now its
    streams stop short of the limit: every request is answered (200, or 503 with
    ``Retry-After``), ``/health`` answers, and the refusals are counted."""
    settings = gateway_settings(cast, redis_pool_size=8, fd_reserve=48, ping_interval=0)
    env = {**os.environ, **settings.to_env(), "GATEWAY_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve"],
        env=env,
        preexec_fn=_nofile_limited(256),
    )
    gw = RunningGateway(settings, proc=proc)
    socks: list[socket.socket] = []
    statuses: list[str] = []
    try:
        wait_until(lambda: _answers(gw, "/ready") == 200, 20, "the gateway to be ready")
        for _ in range(300 // 20):  # waves of 20 connections, each left open
            wave = []
            for _ in range(20):
                sock = socket.create_connection(("127.0.0.1", settings.server.port), timeout=10)
                sock.sendall(raw_stream_request(gw.host, ROOT))
                wave.append(sock)
            for sock in wave:
                try:
                    head = sock.recv(4096)
                except OSError as exc:
                    head = repr(exc).encode()
                status = head.split(b"\r\n", 1)[0].decode(errors="replace")
                statuses.append(status)
                if status == "HTTP/1.1 503 Service Unavailable":
                    assert b"\r\nretry-after: " in head.lower(), head
                    sock.close()
                else:
                    socks.append(sock)
        health = _answers(gw, "/health")
        text = httpx.get(gw.base_url + "/metrics", timeout=5).text
        refused = metric_value(text, 'kev_streams_refused_total{limit="fd_limit"}')
        limit = metric_value(text, "kev_stream_limit")
    finally:
        for sock in socks:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    served = statuses.count("HTTP/1.1 200 OK")
    unanswered = [
        s for s in statuses if s not in ("HTTP/1.1 200 OK", "HTTP/1.1 503 Service Unavailable")
    ]
    assert not unanswered, f"{len(unanswered)} requests got no HTTP answer: {unanswered[:3]}"
    assert 100 <= served == limit < 256, (served, limit)
    assert refused == 300 - served
    assert health == 200
    print(f"ulimit -n 256: {served} streams served, {300 - served} refused with 503")


def _answers(gw: RunningGateway, path: str) -> int:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(gw.base_url + path, timeout=2).status_code
    return 0
