"""Floors that make the gateway's per-delivery CPU meaningful: the cheapest a Python process
can hand one ~200-byte SSE frame to one loopback TCP client.

* ``sock.send`` loop: plain blocking sockets, one ``send`` per client per event.
* uvloop ``transport.write`` loop: what uvicorn does underneath, minus the ASGI layers,
  Starlette, sse-starlette and the hub.

N client/server socket pairs on loopback; each round writes the frame once to every server
socket; process CPU time (user + system) over the rounds, per 1,000 writes. Nobody reads
during the timed rounds: the frames fit in the receive buffers, so no write blocks.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Final

import uvloop

__all__ = ["bare_write_floors"]

FRAME: Final = (
    b'8c\r\nid: 1700000000000-0\nevent: kernel_started\ndata: {"sessionId":"bench",'
    b'"ownerAccessKey":"AKIABENCHROOT0000000","reason":"t=1700000000.000000"}\n\n\r\n'
)


def _pairs(n: int) -> tuple[list[socket.socket], list[socket.socket], socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    port = listener.getsockname()[1]
    clients, servers = [], []
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port))
        s, _ = listener.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        clients.append(c)
        servers.append(s)
    return clients, servers, listener


def _cpu() -> float:
    return time.process_time()


def _sock_send(servers: list[socket.socket], rounds: int) -> float:
    start = _cpu()
    for _ in range(rounds):
        for s in servers:
            s.send(FRAME)
    return _cpu() - start


def _uvloop_write(servers: list[socket.socket], rounds: int) -> float:
    async def go() -> float:
        loop = asyncio.get_running_loop()
        transports = []
        for s in servers:
            s.setblocking(False)
            transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, s)
            transports.append(transport)
        start = _cpu()
        for _ in range(rounds):
            for t in transports:
                t.write(FRAME)
            await asyncio.sleep(0)
        spent = _cpu() - start
        for t in transports:
            t.abort()
        for _ in range(3):  # let the transports close their sockets (and detach them)
            await asyncio.sleep(0)
        return spent

    return uvloop.run(go())


def bare_write_floors(n: int = 2000, rounds: int = 50) -> dict[str, float]:
    """CPU milliseconds per 1,000 writes for both loops (``n`` clients, ``rounds`` events)."""
    out: dict[str, float] = {"clients": n, "rounds": rounds, "frame_bytes": len(FRAME)}
    for key, loop in (("sock_send", _sock_send), ("uvloop_write", _uvloop_write)):
        clients, servers, listener = _pairs(n)
        try:
            spent = loop(servers, rounds)
            out[f"{key}_ms_per_1k"] = spent * 1e6 / (n * rounds)
        finally:
            for sock in (*clients, *servers, listener):
                sock.close()
    return out
