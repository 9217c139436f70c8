"""The bench's floor server (bench.floor): streams open as the load client opens them, every
event the bench publishes reaches every stream as one well-formed chunk, in order, and a
stream that goes away leaves the others alone."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

from bench.floor import FloorSink, floor_servers, stream_request
from bench.ratepub import RatePublisher
from bench.scenarios import SCENARIOS, peer_skip_reason

#: one HTTP chunk holding one SSE frame: size line, the frame, CRLF
CHUNK = re.compile(rb"([0-9a-f]+)\r\n(event: kernel_started\ndata: \{[^\n]*\}\n\n)\r\n")


def _read_events(
    sock: socket.socket, n: int, timeout: float, *, head: bool = True
) -> tuple[bytes, list[bytes]]:
    """The response head (when ``head``: not read yet) and the next ``n`` frames, each
    checked against its chunk size."""
    deadline = time.monotonic() + timeout
    seen = b"" if head else b"\r\n\r\n"
    while True:
        head, sep, rest = seen.partition(b"\r\n\r\n")
        frames = [m for m in CHUNK.finditer(rest)] if sep else []
        if sep and n == 0:
            return head, []
        if frames and len(frames) >= n:
            for match in frames:
                assert int(match.group(1), 16) == len(match.group(2)), match.group(0)
            assert b"".join(m.group(0) for m in frames) == rest[: frames[-1].end()], rest
            return head, [m.group(2) for m in frames[:n]]
        left = deadline - time.monotonic()
        assert left > 0, f"{n} frames not read within {timeout}s: {seen!r}"
        sock.settimeout(left)
        data = sock.recv(65536)
        assert data, f"closed early: {seen!r}"
        seen += data


def test_every_event_reaches_every_stream_as_one_chunk(tmp_path: Path) -> None:
    with floor_servers(tmp_path) as (floor,):
        assert floor.cpu() >= 0 and floor.rss() > 0 and floor.metrics() == {}
        streams = [socket.create_connection(("127.0.0.1", floor.port), timeout=5) for _ in range(4)]
        try:
            for sock in streams:
                sock.sendall(stream_request(floor.port))
            heads = [_read_events(sock, 0, timeout=5)[0] for sock in streams]  # all answered
            assert all(b"text/event-stream" in h and b"chunked" in h for h in heads), heads
            gone = streams.pop()
            gone.close()  # a client that left: the others are not disturbed
            with RatePublisher("redis://unused", sink=FloorSink(floor.publish_port)) as pub:
                assert pub.run(rate=100.0, seconds=0.05) == 5
            bodies = [_read_events(sock, 5, timeout=5, head=False)[1] for sock in streams]
            assert all(frames == bodies[0] for frames in bodies)
            times = [float(re.search(rb'"reason":"t=([0-9.]+)"', f).group(1)) for f in bodies[0]]  # type: ignore[union-attr]
            assert times == sorted(times)  # in publish order
        finally:
            for sock in streams:
                sock.close()


def test_the_floor_runs_the_broadcast_and_idle_scenarios_only() -> None:
    runs = {sc.name for sc in SCENARIOS if peer_skip_reason(sc, "floor") is None}
    assert runs == {"a25", "a100", "b", "e"}
