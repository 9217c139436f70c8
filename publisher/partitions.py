"""Partitions: N independent event buses under one key prefix, for when one slot (one
master of a Redis Cluster) is not enough.

Each partition has its own history, epoch, publisher sequence numbers and live channel
(sharded on a cluster, each in a slot of its own). An event goes to the partition of its
owner (:meth:`Partitions.of`: a stable hash of the owner user's UUID), so one user's stream
lives in one partition and keeps the plain ``<ms>-<seq>`` resume id. A stream that spans
partitions (admins, superadmins, monitors) resumes with a *vector id*: one position per
partition (:func:`encode_vector`, :func:`decode_vector`).

Names. Partition 0 is the bus as it always was (``kev:events``, ``{kev}:events`` on a
cluster): an install with one partition keeps every name and byte. Partition ``p > 0`` has
the prefix ``<prefix>.p<p>`` (``kev.p3:events``); on a cluster ``{<bare>.p<p>.<t>}`` where
the number ``t`` is chosen (the same everywhere: computed, not configured) so that the N
partitions' slots fall in N equal windows of the 16384 slots, starting at partition 0's:
whatever masters hold even shares of the slots, the partitions spread over them (bare
integer tags skew CRC16 badly, as Centrifugo found: centrifuge#554).

Every process must agree on N: :func:`check_partitions` records N in Redis the first time
(``<prefix>:partitions``, SET NX) and raises :class:`PartitionMismatch`, naming both values,
when a process starts with another N. The mapping of owners to partitions depends on N, so
changing N needs a new deployment (another prefix), not a restart.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from dataclasses import dataclass
from typing import Any, Final

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import NoPermissionError

from .bus import Bus
from .keys import Keys

__all__ = [
    "MAX_PARTITIONS",
    "PartitionMismatch",
    "Partitions",
    "check_partitions",
    "check_partitions_sync",
    "decode_vector",
    "encode_vector",
    "is_vector",
    "partition_of",
    "partitions_key",
    "refuse_repartition",
]

log = logging.getLogger(__name__)

#: the most partitions a deployment may have (a vector id carries one position each)
MAX_PARTITIONS: Final = 128

#: a stream id as the vector carries it: ``<ms>-<seq>``, decimal, each part within 64 bits
_ID: Final = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_MAX_PART: Final = 2**64 - 1

StreamId = tuple[int, int]


class PartitionMismatch(RuntimeError):
    """This process was started with another number of partitions than Redis records for
    the prefix (the message names both)."""


def partition_of(owner_user_id: str, n: int) -> int:
    """The partition (``0..n-1``) of the events owned by ``owner_user_id`` (a UUID, in any
    case): its text, stripped and lower case, hashed by BLAKE2b with an 8-byte digest
    (``digest_size=8``), read as a big-endian integer, modulo ``n``. Stable across processes,
    versions and platforms; 0 when ``n`` is 1 or there is no owner."""
    if n <= 1 or not owner_user_id:
        return 0
    digest = hashlib.blake2b(owner_user_id.strip().lower().encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


@functools.lru_cache(maxsize=64)
def _cluster_tags(tag: str, n: int) -> tuple[str, ...]:
    """The hash tag of each partition of ``n`` on a cluster whose partition 0 has the tag
    ``tag``: partition p's slot is in the p-th of n equal windows from partition 0's."""
    width = REDIS_CLUSTER_HASH_SLOTS // n
    start = key_slot(tag.encode())
    out = [tag]
    for p in range(1, n):
        low = (start + p * width) % REDIS_CLUSTER_HASH_SLOTS
        for t in range(1_000_000):
            name = f"{tag}.p{p}.{t}"
            if (key_slot(name.encode()) - low) % REDIS_CLUSTER_HASH_SLOTS < width:
                out.append(name)
                break
        else:  # pragma: no cover - CRC16 reaches every window within a few hundred tries
            raise AssertionError(f"no tag for partition {p} of {n}")
    return tuple(out)


def _split_tag(prefix: str) -> tuple[str, str, str]:
    """A cluster prefix as (before its hash tag, the tag, after it)."""
    opened = prefix.index("{")
    closed = prefix.index("}", opened)
    return prefix[:opened], prefix[opened + 1 : closed], prefix[closed + 1 :]


def _named(prefix: str, cluster: bool) -> Keys:
    """Keys of a partition's prefix, which may be longer than a prefix one may configure
    (the configured one is checked, this one is made from it)."""
    keys = object.__new__(Keys)
    object.__setattr__(keys, "prefix", prefix)
    object.__setattr__(keys, "cluster", cluster)
    return keys


@dataclass(frozen=True, slots=True)
class Partitions:
    """The ``n`` partitions of one deployment's names (``base``: partition 0's, which also
    holds the identities and everything else that is not partitioned)."""

    base: Keys
    n: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.n <= MAX_PARTITIONS:
            raise ValueError(f"partitions must be 1..{MAX_PARTITIONS}, got {self.n}")

    @property
    def keys(self) -> tuple[Keys, ...]:
        """Each partition's names, by partition: ``keys[0]`` is :attr:`base` (the names of
        an install without partitions)."""
        return _partition_keys(self.base, self.n)

    def of(self, owner_user_id: str) -> int:
        """:func:`partition_of` for this deployment's ``n``."""
        return partition_of(owner_user_id, self.n)


@functools.lru_cache(maxsize=256)
def _partition_keys(base: Keys, n: int) -> tuple[Keys, ...]:
    if n == 1:
        return (base,)
    if base.cluster:
        before, tag, after = _split_tag(base.prefix)
        tags = _cluster_tags(tag, n)
        return (base, *(_named(f"{before}{{{t}}}{after}", True) for t in tags[1:]))
    return (base, *(_named(f"{base.prefix}.p{p}", False) for p in range(1, n)))


# -- the vector id --------------------------------------------------------------------------


def is_vector(text: str) -> bool:
    """Whether a ``Last-Event-ID`` is a vector id (a plain stream id has no ``_``)."""
    return "_" in text


def encode_vector(positions: list[StreamId] | tuple[StreamId, ...]) -> str:
    """The resume id of a stream that spans partitions: ``<n>_<id of partition 0>_..._<id of
    partition n-1>``, each id ``<ms>-<seq>`` in decimal (``3_1700000000000-0_0-0_1700000000002-5``).
    ASCII digits, ``-`` and ``_`` only: no space, no newline, no ``:``; what EventSource and
    the SDKs pass back unchanged. Clients treat it as opaque."""
    return f"{len(positions)}_" + "_".join(f"{ms}-{seq}" for ms, seq in positions)


def decode_vector(text: str, n: int) -> tuple[StreamId, ...]:
    """The positions :func:`encode_vector` wrote. ``ValueError`` naming the problem when the
    text is no vector id, or one of another number of partitions than ``n``."""
    head, _, rest = text.partition("_")
    if not head.isdigit() or not head.isascii() or len(head) > 3:
        raise ValueError(f"not a vector id: {text[:64]!r}")
    if int(head) != n:
        raise ValueError(f"a vector id of {int(head)} partitions; this deployment has {n}")
    parts = rest.split("_")
    if len(parts) != n:
        raise ValueError(f"a vector id of {n} partitions with {len(parts)} positions")
    out: list[StreamId] = []
    for part in parts:
        if not _ID.fullmatch(part):
            raise ValueError(f"not a stream id in the vector id: {part[:48]!r}")
        ms, seq = part.split("-")
        position = int(ms), int(seq)
        if position[0] > _MAX_PART or position[1] > _MAX_PART:
            raise ValueError(f"stream id out of range in the vector id: {part[:48]!r}")
        out.append(position)
    return tuple(out)


# -- agreeing on N --------------------------------------------------------------------------


def partitions_key(base: Keys) -> str:
    """Where the number of partitions is recorded (partition 0's slot)."""
    return base.partitions


def _recorded(previous: Any, n: int, base: Keys) -> int:
    if previous is None:
        return n
    text = previous.decode() if isinstance(previous, bytes) else str(previous)
    if text != str(n):
        raise PartitionMismatch(
            f"this process has {n} partition(s) but Redis records {text} for the prefix "
            f"{base.prefix!r} (key {partitions_key(base)}): every publisher, gateway, bridge "
            f"and admin command must use the same number (GATEWAY_REDIS_PARTITIONS, "
            f"KEV_PARTITIONS)"
        )
    return n


def _not_permitted(exc: NoPermissionError, n: int, base: Keys, quiet: bool = False) -> int:
    """One partition under an ACL written before partitions existed: today's bus, unchecked
    (nothing of an existing install breaks). More than one: the record is required."""
    if n == 1:
        (log.debug if quiet else log.warning)(
            "cannot check the number of partitions (%s): the Redis user may not touch %s; "
            "regenerate the ACL (gateway acl) so every process can",
            exc,
            partitions_key(base),
        )
        return n
    raise PartitionMismatch(
        f"this process has {n} partitions, and its Redis user may not record or read that "
        f"number at {partitions_key(base)} ({exc}): regenerate the ACL "
        f"(gateway acl --partitions {n})"
    ) from exc


async def check_partitions(redis: Any, base: Keys, n: int, *, quiet: bool = False) -> int:
    """Record ``n`` for the prefix if nothing is recorded yet, else compare (one ``SET NX
    GET``, Redis >= 7.0): ``n``, or :class:`PartitionMismatch` naming both numbers.
    ``redis``: an asyncio client; ``quiet``: a check repeated for the life of a process, which
    logs no warning for an ACL that predates the record. Other Redis errors propagate."""
    try:
        previous = await redis.set(partitions_key(base), str(n), nx=True, get=True)
    except NoPermissionError as exc:
        return _not_permitted(exc, n, base, quiet)
    return _recorded(previous, n, base)


async def refuse_repartition(redis: Any, base: Keys, n: int) -> None:
    """Before the first record of ``n`` > 1 partitions for the prefix: raise
    :class:`PartitionMismatch` when partition 0's history already holds events, written by
    processes of one partition before any number was recorded (an install that predates the
    record, or whose ACL kept it from writing one). Their owners' events of partitions 1..n-1
    would stay in partition 0, where their streams no longer read: the number of partitions
    of a deployment with a history cannot change (a new deployment, another prefix, can).
    ``redis``: an asyncio client that may read both keys."""
    if n <= 1 or await redis.get(partitions_key(base)) is not None:
        return
    info = await Bus(base).history_info(redis)
    held = 0 if info is None else int(info.get("length", 0))
    if held:
        raise PartitionMismatch(
            f"this process has {n} partitions, but the prefix {base.prefix!r} holds a history "
            f"of {held} events and no recorded number of partitions ({partitions_key(base)}): "
            "it was written with one partition, and an existing deployment cannot change its "
            "number; keep GATEWAY_REDIS_PARTITIONS=1 here, or start a deployment with "
            "another prefix"
        )


def check_partitions_sync(redis: Any, base: Keys, n: int) -> int:
    """As :func:`check_partitions`, on a blocking client."""
    try:
        previous = redis.set(partitions_key(base), str(n), nx=True, get=True)
    except NoPermissionError as exc:
        return _not_permitted(exc, n, base)
    return _recorded(previous, n, base)
