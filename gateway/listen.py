"""Whether a process can listen where its settings say, checked before uvicorn starts, so a
port already taken is one clear line and status 1, not uvicorn's own traceback-free exit 3
(``gateway bridge`` and ``gateway sync-identities``; ``gateway serve`` binds its own socket
in :mod:`gateway.http.server`)."""

from __future__ import annotations

import errno
import socket

__all__ = ["ListenError", "check_listen"]


class ListenError(RuntimeError):
    """The address cannot be listened on; the message says why and which setting to change."""


def check_listen(host: str, port: int, *, flags: str) -> None:
    """Bind ``host:port`` once and let go; raise :class:`ListenError` naming ``flags`` (the
    settings that choose the address) when it is taken, not this machine's, or not allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror} ({flags})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            why = {
                errno.EADDRINUSE: f"port {port} is already in use on {host}",
                errno.EADDRNOTAVAIL: f"{host} is not an address of this machine",
                errno.EACCES: f"not allowed to listen on port {port}",
            }.get(exc.errno or 0, str(exc))
            raise ListenError(f"cannot listen on {host}:{port}: {why} ({flags})") from None
