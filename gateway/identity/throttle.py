"""Failed-login throttling, shared by every replica through Redis.

Each login attempt is counted against two subjects, the account it names (a user id or an
access key, known or not) and the client address it comes from, in one hash per subject
(``Keys.login_throttle``: ``<prefix>:login-throttle:<kind>:<name>``; ``n`` attempts not yet
forgiven, ``until`` the millisecond, by Redis' clock, before which the subject is blocked).
One server-side script checks and counts an attempt atomically, so replicas and parallel
requests cannot race past the limit:

* an attempt on a blocked account is refused (the caller answers 429 with ``Retry-After``)
  and not counted: that is the protection against guessing one account's password;
* an attempt from a blocked address is not counted either, but only reported
  (:attr:`Verdict.address_wait`): the caller refuses it for an unknown account or a wrong
  credential, and lets a correct credential for a known account in, after counting it
  against the account alone (:meth:`LoginThrottle.attempt` with no address). So a client
  that blocks an address (a NAT's, or a load balancer's when ``trusted_proxies`` is wrong)
  cannot lock anyone else out; only an account's own failures block the account;
* otherwise it is counted in advance, as if it will fail; past the subject's free attempts it
  blocks the subject for ``backoff * 2**(n - free - 1)`` seconds, at most ``backoff_max``;
* a success forgets the account's count and takes the attempt back from the address;
* a subject's count is forgotten ``window`` seconds after its last attempt (the key's TTL).

Memory: one small hash (~100 bytes) per subject that attempted a login in the last
``window`` seconds; attempts from a blocked address create none.
"""

from __future__ import annotations

import math
from typing import Any, Final, Literal, NamedTuple

from redis.asyncio import Redis

from publisher.keys import Keys

__all__ = ["LoginThrottle", "Subject", "Verdict"]

#: ``account`` a user id (``user:<id>``) or access key (``key:<ak>``); ``address`` an IP
Subject = tuple[Literal["account", "address"], str]

# KEYS[1] the account's hash, KEYS[2] the address' (optional). ARGV[1] backoff ms, ARGV[2]
# backoff_max ms, ARGV[3] window ms, ARGV[3 + i] free attempts of KEYS[i]. Returns {the ms the
# account is blocked for, the ms the address is}: counted only when both are 0.
_ATTEMPT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = {0, 0}
for i, key in ipairs(KEYS) do
  local blocked = tonumber(redis.call('HGET', key, 'until') or '0')
  if blocked > now then wait[i] = blocked - now end
end
if wait[1] > 0 or wait[2] > 0 then return wait end
local base, cap, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for i, key in ipairs(KEYS) do
  local n = redis.call('HINCRBY', key, 'n', 1)
  local free = tonumber(ARGV[3 + i])
  local ttl = window
  if n > free then
    local block = math.min(base * 2 ^ math.min(n - free - 1, 40), cap)
    redis.call('HSET', key, 'until', now + block)
    if block > ttl then ttl = block end
  end
  redis.call('PEXPIRE', key, math.floor(ttl))
end
return wait
"""

# KEYS[1] the account's hash, KEYS[2] the address' (optional): forget the one, take the
# attempt back from the other, without creating it again if it has expired meanwhile.
_SUCCEEDED: Final = """
redis.call('DEL', KEYS[1])
if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'n', -1)
end
return 0
"""


class Verdict(NamedTuple):
    """What :meth:`LoginThrottle.attempt` found, in seconds (0.0: not blocked)."""

    #: the account is blocked: refuse unchecked, nothing was counted
    account_wait: float
    #: the address is blocked, nothing was counted: refuse an unknown account or a wrong
    #: credential; a known account's attempt is counted alone and checked
    address_wait: float


class LoginThrottle:
    """The attempt counters of the module docstring, on ``redis`` under ``keys.prefix``.

    ``free`` and ``free_per_address`` are attempts before backoff starts; ``backoff``,
    ``backoff_max`` and ``window`` are seconds. Methods raise ``redis.RedisError`` when Redis
    is away (the login then fails as any request needing Redis does).
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        free: int,
        free_per_address: int,
        backoff: float,
        backoff_max: float,
        window: float,
    ) -> None:
        self._keys = keys
        self._free = {"account": free, "address": free_per_address}
        self._args = (round(backoff * 1000), round(backoff_max * 1000), round(window * 1000))
        self._attempt: Any = redis.register_script(_ATTEMPT)
        self._succeeded: Any = redis.register_script(_SUCCEEDED)

    def key(self, subject: Subject) -> str:
        """The Redis key counting ``subject`` (:meth:`publisher.keys.Keys.login_throttle`)."""
        kind, name = subject
        return self._keys.login_throttle(kind, name)

    async def attempt(self, account: Subject, address: Subject | None = None) -> Verdict:
        """Count one login attempt against ``account`` (and ``address``), unless either is
        blocked: then count nothing and say for how long each is."""
        subjects = [account] + ([address] if address is not None else [])
        keys = [self.key(s) for s in subjects]
        free = [self._free[kind] for kind, _ in subjects]
        account_ms, address_ms = await self._attempt(keys=keys, args=[*self._args, *free])
        return Verdict(max(0.0, int(account_ms) / 1000), max(0.0, int(address_ms) / 1000))

    async def succeeded(self, account: Subject, address: Subject | None = None) -> None:
        """The attempt counted for ``account`` (and ``address``) succeeded: forget the
        account's failures, and take the one attempt back from the address (its block, if
        any, stays)."""
        keys = [self.key(account)] + ([self.key(address)] if address is not None else [])
        await self._succeeded(keys=keys)

    @staticmethod
    def retry_after(wait: float) -> int:
        """``wait`` seconds as a ``Retry-After`` value (whole seconds, at least 1)."""
        return max(1, math.ceil(wait))
