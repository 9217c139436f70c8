"""Password hashes for browser logins: scrypt with a random salt, compared in constant
time, with the cost parameters bounded so a stored hash cannot make a login allocate
unbounded memory; the policy a new password must meet (:func:`check_password`), which every
path that sets one (``gateway import``, ``gateway user add``) applies; and the thread pool a
replica checks passwords in (:class:`PasswordChecks`).

Password checks (scrypt, ~16 MiB and ~50 ms of CPU each) run in a pool of their own
(``login_hash_threads``), never in the loop's default executor, which Redis reconnects use to
resolve host names: a login flood queues behind its own pool and nothing else. At most
``login_hash_queue`` more wait for a thread; beyond that a login gets 503 at once."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import hmac
import os
import secrets
from typing import Final

from gateway.errors import Unavailable

from .models import IdentityError

__all__ = [
    "MAX_PASSWORD_LENGTH",
    "MIN_PASSWORD_LENGTH",
    "PasswordChecks",
    "WeakPasswordError",
    "check_password",
    "hash_password",
    "verify_password",
]

#: characters a new password has at least, and at most (what the login endpoint accepts)
MIN_PASSWORD_LENGTH: Final = 12
MAX_PASSWORD_LENGTH: Final = 1024
#: different characters a new password has at least (no "aaaaaaaaaaaa")
_MIN_DISTINCT: Final = 5

_SCRYPT_N: Final = 2**14
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1
_SCRYPT_MAX_MEM: Final = 2**26  # a stored hash must not make a login allocate unbounded memory


def hash_password(password: str) -> str:
    """``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>`` with a random 16-byte salt."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


class WeakPasswordError(IdentityError):
    """A new password that does not meet the policy; says which rule, never the password."""


def check_password(password: str, user_id: str = "") -> None:
    """The policy for a new password (NIST SP 800-63B's length-first kind): 12-1024
    characters, at least 5 different ones, not containing the user id. Raises
    :class:`WeakPasswordError` naming the rule broken."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPasswordError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPasswordError(f"the password must be at most {MAX_PASSWORD_LENGTH} characters")
    if len(set(password)) < _MIN_DISTINCT:
        raise WeakPasswordError(
            f"the password must have at least {_MIN_DISTINCT} different characters"
        )
    if len(user_id) >= 3 and user_id.casefold() in password.casefold():
        raise WeakPasswordError("the password must not contain the user id")


def verify_password(password: str, password_hash: str) -> bool:
    """Constant-time check against :func:`hash_password` output; False if the hash is malformed."""
    try:
        scheme, n_s, r_s, p_s, salt_s, digest_s = password_hash.split("$")
        n, r, p = int(n_s), int(r_s), int(p_s)
        salt = base64.b64decode(salt_s, validate=True)
        expected = base64.b64decode(digest_s, validate=True)
        if scheme != "scrypt" or not (
            16 <= len(expected) <= 64 and 1 < n and 0 < r and 0 < p <= 16
        ):
            return False
        if 128 * n * r > _SCRYPT_MAX_MEM:
            return False
        actual = hashlib.scrypt(
            password.encode(),
            salt=salt,
            n=n,
            r=r,
            p=p,
            dklen=len(expected),
            maxmem=2 * _SCRYPT_MAX_MEM,
        )
    except ValueError:  # bad split, number, base64, or scrypt parameters (n not a power of 2)
        return False
    return hmac.compare_digest(actual, expected)


class PasswordChecks:
    """scrypt in ``threads`` threads of its own, at most ``queue`` more waiting (else 503).
    The lifespan that makes it closes it (:meth:`close`)."""

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
