"""``socket_progress`` on real loopback sockets: what the lag bound (``max_lag``) reads.

A stream that keeps up costs one ioctl (SIOCOUTQ) and no ``getsockopt`` (under uvloop each
``getsockopt`` made a ``socket.socket``: 3% of the gateway's CPU at a25); a client that stops
reading shows unacknowledged bytes, and the acknowledged count is read then."""

from __future__ import annotations

import socket
import sys
import time
from typing import Any

import pytest

from gateway.fanout.connection import socket_progress

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the lag bound is Linux-only")


class Counting:
    """A socket that counts its ``getsockopt`` calls."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.getsockopts = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def getsockopt(self, *args: Any) -> Any:
        self.getsockopts += 1
        return self.sock.getsockopt(*args)


def _pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a window that shuts soon
    return server, client


def test_a_stream_that_keeps_up_costs_no_getsockopt() -> None:
    server, client = _pair()
    with server, client:
        probe = Counting(server)
        server.sendall(b"x" * 1000)
        assert client.recv(1000, socket.MSG_WAITALL) == b"x" * 1000
        deadline = time.monotonic() + 5
        while (progress := socket_progress(probe)) != (0, 0):  # the ACK is on its way
            assert time.monotonic() < deadline, progress
            time.sleep(0.01)
        assert probe.getsockopts == 0


def test_a_client_that_stopped_reading_shows_what_waits() -> None:
    server, client = _pair()
    with server, client:
        server.setblocking(False)
        sent = 0
        try:
            while True:  # until our send queue is full: the client's window is shut
                sent += server.send(b"y" * 65536)
        except BlockingIOError:
            pass
        probe = Counting(server)
        progress = socket_progress(probe)
        assert progress is not None
        acked, unacked = progress
        assert unacked > 0 and probe.getsockopts == 1
        assert 0 < acked < sent and acked + unacked == sent
