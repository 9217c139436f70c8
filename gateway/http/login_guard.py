"""What bounds ``POST /auth/login``: whose attempt it is (the client address behind trusted
load balancers), password checks in threads of their own, and the cap on browser sessions
per access key.

* Password checks (scrypt, ~16 MiB and ~50 ms of CPU each) run in a thread pool of their own
  (``login_hash_threads``), never in the loop's default executor, which Redis reconnects use
  to resolve host names: a login flood queues behind its own pool and nothing else. At most
  ``login_hash_queue`` more wait for a thread; beyond that a login gets 503 at once. Attempts
  the throttle (:mod:`gateway.identity.throttle`) refuses never reach the pool.
* Sessions: each access key has a sorted set (``Keys.browser_sessions_of``) of its
  sessions' token hashes, scored by creation time. A login beyond ``max_sessions_per_key``
  live sessions deletes the oldest ones and announces them, so their streams end as on
  logout. Memory per session: the session string (~330 bytes with its key, ``MEMORY USAGE``)
  plus its index entry (~110 bytes).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import ipaddress
import logging
import secrets
from collections.abc import Sequence
from typing import cast

from starlette.types import Scope

from gateway.errors import Unavailable
from gateway.identity.changes import make_change, queue_change
from gateway.identity.passwords import hash_password, verify_password
from gateway.settings import Settings

from .state import GatewayState

__all__ = ["PasswordChecks", "cap_sessions", "client_address", "session_index"]

log = logging.getLogger(__name__)

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.cache
def _networks(trusted: tuple[str, ...]) -> tuple[_Network, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in trusted)


def _trusted(address: str, networks: Sequence[_Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(scope: Scope, settings: Settings) -> str:
    """The address a request comes from: the peer's, or, when the peer is one of
    ``trusted_proxies``, the last address in ``X-Forwarded-For`` that is not (the one the
    first trusted proxy saw; earlier entries are the client's to forge)."""
    client = scope.get("client")
    peer = client[0] if client else "unknown"
    networks = _networks(settings.trusted_proxies)
    if not networks or not _trusted(peer, networks):
        return peer
    forwarded: list[str] = []
    for name, value in scope["headers"]:
        if name == b"x-forwarded-for":
            forwarded += [part.strip() for part in value.decode("latin-1").split(",")]
    for hop in reversed(forwarded):
        if not _trusted(hop, networks):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return "invalid"  # a proxy we trust passed garbage: one bucket for all of it
    return peer


class PasswordChecks:
    """scrypt in ``threads`` threads of its own, at most ``queue`` more waiting (else 503)."""

    def __init__(self, threads: int, queue: int) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="login")
        self._slots = asyncio.Semaphore(threads)
        self._threads = threads
        self._queue = queue
        self._waiting = 0
        self._decoy: str | None = None

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """Whether ``password`` matches ``password_hash``; with None (unknown user), a decoy
        hash is checked so the answer takes as long. Raises
        :class:`~gateway.errors.Unavailable` when the queue is full."""
        if self._waiting >= self._threads + self._queue:
            raise Unavailable("Too many logins at once", retry_after=1)
        self._waiting += 1
        try:
            async with self._slots:
                loop = asyncio.get_running_loop()
                if password_hash is None:
                    if self._decoy is None:
                        self._decoy = await loop.run_in_executor(
                            self._pool, hash_password, secrets.token_urlsafe(16)
                        )
                    password_hash = self._decoy
                check = loop.run_in_executor(self._pool, verify_password, password, password_hash)
                try:
                    return await asyncio.shield(check)
                except asyncio.CancelledError:
                    # The thread runs on regardless; it keeps its slot until it ends.
                    await asyncio.wait([check])
                    raise
        finally:
            self._waiting -= 1

    def close(self) -> None:
        """Let the threads end once idle (idempotent)."""
        self._pool.shutdown(wait=False)


def session_index(state: GatewayState, access_key: str) -> str:
    """The sorted set of ``access_key``'s browser sessions (token hash -> created, seconds):
    :meth:`publisher.keys.Keys.browser_sessions_of`."""
    return state.keys.browser_sessions_of(access_key)


async def cap_sessions(state: GatewayState, access_key: str) -> list[str]:
    """Hold ``access_key`` to ``max_sessions_per_key`` live sessions: forget index entries
    whose session is gone (logged out, expired), delete the oldest live ones beyond the cap
    and announce them (their streams end, ``logged_out``). Returns the token hashes ended.
    Two logins racing may both end the same session; deleting it twice is harmless."""
    index = session_index(state, access_key)
    cap = state.settings.max_sessions_per_key
    if await state.redis.zcard(index) <= cap:
        return []
    raw = await state.redis.zrange(index, 0, -1)  # oldest first
    members = [cast(bytes, m).decode() for m in raw]  # decode_responses is off
    async with state.redis.pipeline(transaction=False) as pipe:
        for name in members:
            pipe.exists(state.keys.browser_session(name))
        alive = await pipe.execute()
    gone = [name for name, exists in zip(members, alive, strict=True) if not exists]
    live = [name for name, exists in zip(members, alive, strict=True) if exists]
    evict = live[: max(0, len(live) - cap)]
    async with state.redis.pipeline(transaction=True) as pipe:
        if gone or evict:
            pipe.zrem(index, *gone, *evict)
        if evict:
            pipe.delete(*(state.keys.browser_session(name) for name in evict))
            queue_change(pipe, state.keys, make_change(sessions=evict), identity=False)
        await pipe.execute()
    if evict:
        log.info(
            "access key %s over %d browser sessions: ended the %d oldest",
            access_key,
            cap,
            len(evict),
        )
    return evict
