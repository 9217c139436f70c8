"""Review finding: a stream refused at the file-descriptor cap (503 ``fd_limit``) is answered
with a keep-alive response, so the refused connection keeps its fd. Clients that keep their
connection (HTTP/1.1's default: httpx/requests pools, SDKs) then exhaust the fds the cap
was meant to protect: later requests get no HTTP answer and ``/health`` goes unanswered,
the very failure the cap exists to prevent. ``test_capacity`` hides it by closing every
refused socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from tests.support.gateway_server import RunningGateway, gateway_settings
from tests.support.http import raw_stream_request
from tests.support.identities import ROOT
from tests.support.wait import wait_until
from tests.system.test_capacity import _answers, _nofile_limited


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """The server closes ``sock`` within ``seconds``: EOF after whatever is still on its way
    (the rest of the answer may come in another read than its head)."""
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if sock.recv(4096) == b"":
                return True
    except TimeoutError:
        pass
    return False


def test_fd_limit_refusal_closes_its_connection(cast: str) -> None:
    settings = gateway_settings(cast, redis_pool_size=8, fd_reserve=48, ping_interval=0)
    env = {**os.environ, **settings.to_env(), "GATEWAY_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve"], env=env, preexec_fn=_nofile_limited(256)
    )
    gw = RunningGateway(settings, proc=proc)
    socks: list[socket.socket] = []
    statuses: list[str] = []
    refused_head = b""
    refused_closed = None
    try:
        wait_until(lambda: _answers(gw, "/ready") == 200, 20, "the gateway to be ready")
        for _ in range(300 // 20):  # waves of 20; every connection kept, as a pooling client does
            wave = []
            for _ in range(20):
                sock = socket.create_connection(("127.0.0.1", settings.server.port), timeout=3)
                sock.sendall(raw_stream_request(gw.host, ROOT))
                wave.append(sock)
            for sock in wave:
                try:
                    head = sock.recv(4096)
                except OSError as exc:
                    head = repr(exc).encode()
                status = head.split(b"\r\n", 1)[0].decode(errors="replace")
                statuses.append(status)
                socks.append(sock)
                if status == "HTTP/1.1 503 Service Unavailable" and refused_closed is None:
                    refused_head = head
                    refused_closed = _closed_within(sock, 2.0)
        health = _answers(gw, "/health")
    finally:
        for sock in socks:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    unanswered = [
        s for s in statuses if s not in ("HTTP/1.1 200 OK", "HTTP/1.1 503 Service Unavailable")
    ]
    assert b"\r\nconnection: close" in refused_head.lower(), refused_head
    assert refused_closed, "the refused connection was left open (it keeps its fd)"
    assert not unanswered, f"{len(unanswered)} of 300 requests got no HTTP answer"
    assert health == 200
