"""The edges every request crosses, against a real gateway (uvicorn with the production
options, uvloop + httptools) over raw sockets: one request-head size limit and one head
deadline on every path and in every worker, a cap on connections, no Host-built redirects."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.routing import Route

from gateway.http.app import create_app
from gateway.settings import Settings
from tests.support.gateway_server import RunningGateway, gateway_settings, spawn_gateway

StartGateway = Callable[..., RunningGateway]

MAX_HEAD = 4096
TIMEOUT = 1.0


def _routes() -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, and a path it does not."""
    app = create_app(Settings.load({}))
    out = [("GET", "/no/such/path")]
    for route in app.app.routes:
        assert isinstance(route, Route)
        out += [(method, route.path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return out


ROUTES = _routes()


@pytest.fixture
def edge(cast: str, start_gateway: StartGateway) -> RunningGateway:
    return start_gateway(max_header_bytes=MAX_HEAD, header_timeout=TIMEOUT, max_connections=8)


def _connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return sock


def _read_all(sock: socket.socket, deadline: float) -> bytes:
    """Everything until the peer closes (or resets), at most until ``deadline``."""
    out = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not data:
            break
        out += data
    return out


def _status(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response.split(b" ", 2)[1])


def _head(method: str, path: str, filler: int) -> bytes:
    """A request head of ``method path`` with a header of ``filler`` bytes."""
    body = b"{}" if method == "POST" else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\nX-Filler: "
    ).encode()
    return head + b"f" * filler + b"\r\n\r\n" + body


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_every_path_refuses_a_head_over_the_limit(
    edge: RunningGateway, method: str, path: str
) -> None:
    port = edge.settings.server.port
    # Just under the limit: whatever the route answers, it answers the same to a small head.
    answers = []
    for filler in (10, MAX_HEAD - 300):
        with _connect(port) as sock:
            sock.sendall(_head(method, path, filler))
            answers.append(_status(_read_all(sock, time.monotonic() + 5)))
    assert answers[0] == answers[1] and answers[0] not in (408, 431), answers
    # Over it, in one write and in pieces: 431, and the connection closes.
    for pieces in (1, 64):
        data = _head(method, path, MAX_HEAD + 1)
        with _connect(port) as sock:
            step = len(data) // pieces + 1
            with contextlib.suppress(OSError):  # the gateway may stop reading first
                for i in range(0, len(data), step):
                    sock.sendall(data[i : i + step])
            response = _read_all(sock, time.monotonic() + 5)
        assert _status(response) == 431, response[:300]
        assert b"connection: close" in response.lower()


def _time_to_close(port: int, send: Callable[[socket.socket], None]) -> tuple[float, bytes]:
    with _connect(port, timeout=10) as sock:
        started = time.monotonic()
        send(sock)
        response = _read_all(sock, started + 10)
        return time.monotonic() - started, response


def _trickle(sock: socket.socket) -> None:
    # A byte every 0.2 s: bytes arriving do not restart the deadline.
    for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n":
        try:
            sock.send(bytes([byte]))
        except OSError:
            return
        time.sleep(0.2)


def _after_a_response(sock: socket.socket) -> None:
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    # then idle: the deadline runs from the end of the response


@pytest.mark.parametrize(
    ("how", "send", "answer"),
    [
        ("nothing", lambda sock: None, None),
        ("part of a request line", lambda sock: sock.sendall(b"GET /heal"), 408),
        ("part of a header", lambda sock: sock.sendall(b"GET /health HTTP/1.1\r\nX-A: b"), 408),
        ("a trickle", _trickle, 408),
        ("keep-alive after a response", _after_a_response, 200),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_a_connection_without_a_complete_head_is_closed_after_the_timeout(
    edge: RunningGateway,
    how: str,
    send: Callable[[socket.socket], None],
    answer: int | None,
) -> None:
    took, response = _time_to_close(edge.settings.server.port, send)
    assert TIMEOUT * 0.9 <= took <= TIMEOUT + 1.5, (how, took)
    if answer is None:
        assert response == b""
    else:
        assert _status(response) == answer


def test_fifty_partial_heads_are_all_closed_in_time(edge: RunningGateway) -> None:
    socks = [_connect(edge.settings.server.port) for _ in range(50)]
    try:
        started = time.monotonic()
        for sock in socks:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Partial: ")
        closed = [_read_all(sock, started + TIMEOUT + 5) for sock in socks]
        took = time.monotonic() - started
    finally:
        for sock in socks:
            sock.close()
    assert all(_status(r) == 408 for r in closed)
    assert took <= TIMEOUT + 2.0, took


def _keep_alive_request(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    sock.settimeout(5)
    return sock.recv(65536)


def test_connections_over_the_cap_get_503_until_one_closes(
    cast: str, start_gateway: StartGateway
) -> None:
    gw = start_gateway(max_connections=4, header_timeout=30.0)
    port = gw.settings.server.port
    held = [_connect(port) for _ in range(4)]
    try:
        for sock in held:  # four answered, and kept open
            assert _status(_keep_alive_request(sock)) == 200
        for _ in range(3):  # a fifth, however often it tries
            with _connect(port) as extra:
                response = _keep_alive_request(extra) + _read_all(extra, time.monotonic() + 5)
            assert _status(response) == 503, response
            assert b"retry-after: 1" in response.lower()
            assert b"connection: close" in response.lower()
            assert b"connection limit" in response
        held.pop().close()
        deadline = time.monotonic() + 5
        while True:  # the gateway sees the close soon after
            with _connect(port) as again:
                if _status(_keep_alive_request(again)) == 200:
                    break
            assert time.monotonic() < deadline, "a freed connection slot was not reused"
            time.sleep(0.05)
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize(("method", "path"), [r for r in ROUTES if r[1] != "/"])
def test_no_redirect_is_built_from_the_host_header(
    edge: RunningGateway, method: str, path: str
) -> None:
    other = path[:-1] if path.endswith("/") else path + "/"
    with _connect(edge.settings.server.port) as sock:
        sock.sendall(
            f"{method} {other} HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        response = _read_all(sock, time.monotonic() + 5)
    assert not 300 <= _status(response) < 400, response
    assert b"evil.example" not in response
    assert b"location:" not in response.lower()


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _send_big_head(port: int, size: int) -> tuple[bytes, float]:
    """A ``size``-byte header to /health; (the answer, seconds until it came)."""
    with _connect(port, timeout=10) as sock:
        stop = threading.Event()

        def pump() -> None:
            chunk = b"X-Big: " + b"a" * (1 << 20)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            sent = 0
            with contextlib.suppress(OSError):
                while sent < size and not stop.is_set():
                    sock.sendall(chunk)
                    sent += len(chunk)

        started = time.monotonic()
        sender = threading.Thread(target=pump, daemon=True)
        sender.start()
        try:
            response = _read_all(sock, started + 10)
        finally:
            stop.set()
        took = time.monotonic() - started
        sock.shutdown(socket.SHUT_RDWR)
    sender.join(10)
    return response, took


@contextlib.contextmanager
def _served(redis_url: str, **changes: object) -> Iterator[RunningGateway]:
    with spawn_gateway(gateway_settings(redis_url, **changes)) as gw:
        yield gw


def test_a_64_mb_head_is_refused_without_growing_the_replica(cast: str) -> None:
    with _served(cast) as gw:  # `gateway serve`: the default limits
        assert gw.proc is not None
        before = _rss_kib(gw.proc.pid)
        response, took = _send_big_head(gw.settings.server.port, 64 << 20)
        after = _rss_kib(gw.proc.pid)
    print(f"64 MB head: {_status(response)} in {took:.3f}s, RSS {before} -> {after} KiB")
    assert _status(response) == 431
    assert after - before < 8 * 1024, (before, after)


@pytest.mark.slow
def test_the_limits_hold_in_every_worker(cast: str) -> None:
    with _served(cast, workers=2, max_header_bytes=MAX_HEAD, header_timeout=TIMEOUT) as gw:
        port = gw.settings.server.port
        # The kernel spreads connections over both workers' accepts: 16 of each kind.
        for _ in range(16):
            with _connect(port) as sock:
                sock.sendall(_head("GET", "/health", MAX_HEAD + 1))
                assert _status(_read_all(sock, time.monotonic() + 5)) == 431
        socks = [_connect(port) for _ in range(16)]
        started = time.monotonic()
        for sock in socks:
            sock.sendall(b"GET /health HTTP/1.1\r\nX-A: ")
        answers = [_read_all(sock, started + TIMEOUT + 5) for sock in socks]
        took = time.monotonic() - started
        for sock in socks:
            sock.close()
    assert [_status(a) for a in answers] == [408] * 16
    assert took <= TIMEOUT + 2.0


def _seconds(text: str, pattern: str) -> float:
    match = re.search(pattern, text, re.M)
    assert match, pattern
    return float(match.group(1))


def test_the_shipped_load_balancers_refuse_first() -> None:
    """nginx and haproxy bound heads tighter and sooner than the replicas behind them, keep
    idle upstream connections for less than a replica does, and send it at most its cap."""
    deploy = Path(__file__).resolve().parents[2] / "deploy"
    nginx = (deploy / "nginx" / "nginx.conf").read_text()
    upstream = (deploy / "nginx" / "upstream.compose.conf").read_text()
    haproxy = (deploy / "haproxy" / "haproxy.cfg").read_text()
    gateway = Settings.load({}).limits
    forwarded = 512  # the X-Forwarded-* and X-Real-IP headers the balancers add
    small = _seconds(nginx, r"^\s*client_header_buffer_size (\d+)k;") * 1024
    match = re.search(r"^\s*large_client_header_buffers (\d+) (\d+)k;", nginx, re.M)
    assert match
    nginx_head = small + int(match.group(1)) * int(match.group(2)) * 1024
    assert nginx_head + forwarded <= gateway.max_header_bytes
    assert _seconds(nginx, r"^\s*client_header_timeout (\d+)s;") < gateway.header_timeout
    assert _seconds(upstream, r"^\s*keepalive_timeout (\d+)s;") < gateway.header_timeout
    assert re.findall(r"max_conns=(\d+)", upstream) == [str(gateway.max_connections)] * 3
    bufsize = _seconds(haproxy, r"^\s*tune\.bufsize (\d+)")
    haproxy_head = bufsize - _seconds(haproxy, r"^\s*tune\.maxrewrite (\d+)")
    assert haproxy_head + forwarded <= gateway.max_header_bytes
    assert _seconds(haproxy, r"^\s*timeout http-request (\d+)s") < gateway.header_timeout
    assert _seconds(haproxy, r"^\s*default-server .* maxconn (\d+)") == gateway.max_connections
