"""The tests' TCP proxy leaves no socket behind when it is cut while connections arrive: a
socket it left became a ResourceWarning in whichever test the garbage collector ran next
(CI failed twice that way, each time in an unrelated test)."""

from __future__ import annotations

import gc
import socket
import threading
import warnings

from tests.support.redis_server import RedisServer
from tests.support.tcp_proxy import tcp_proxy


def _hammer(port: int, stop: threading.Event) -> None:
    """Connect, send a PING, move on, until told to stop (refusals included: the proxy closes)."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
        except OSError:
            pass


def test_a_cut_during_a_storm_of_connections_leaves_no_socket(redis_server: RedisServer) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for round_ in range(8):
            stop = threading.Event()
            with tcp_proxy(redis_server.port) as proxy:
                threads = [
                    threading.Thread(target=_hammer, args=(proxy.port, stop)) for _ in range(4)
                ]
                for thread in threads:
                    thread.start()
                threading.Event().wait(0.005 * (round_ % 5))  # cut at different moments
            stop.set()
            for thread in threads:
                thread.join(5)
            gc.collect()
    leaked = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaked == []
