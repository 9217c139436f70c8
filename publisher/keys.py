"""Redis key and channel names, derived from one configurable prefix.

Several deployments can share one Redis by choosing different prefixes. The gateway uses the
same class, so a publisher and a gateway agree on names by agreeing on the prefix.

On a Redis Cluster every name carries the prefix as its hash tag (``kev`` becomes ``{kev}``:
``{kev}:events``, ``{kev}:epoch``, ``{kev}:live``...), so the keys one script or transaction
touches share a slot, and the live channel (published with SPUBLISH) shares it too: one
master holds the deployment's history and its identities (:func:`cluster_prefix`,
:meth:`Keys.on`). A prefix that already has a hash tag is kept as it is. Single-node and
Sentinel deployments keep their names (nothing to migrate); moving a deployment onto a
cluster renames every key, which ``gateway copy-keys`` does (README, "Redis Cluster").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_PREFIX", "Keys", "cluster_prefix"]

DEFAULT_PREFIX: Final = "kev"
_PREFIX = re.compile(r"^[A-Za-z0-9_.\-:{}]{1,64}$")
#: the part of a key Redis Cluster hashes: the first {...} with something inside
_HASH_TAG = re.compile(r"\{[^{}]+\}")
#: how the prefix of a partition beyond 0 ends (publisher.partitions): ``kev.p3``, and on a
#: cluster ``{kev.p3.10}``; a configured prefix may not, or it would share that partition's
#: names with another deployment
_PARTITION_NAME = re.compile(r"\.p[0-9]+(\.[0-9]+)?$")


def cluster_prefix(prefix: str) -> str:
    """``prefix`` as a Redis Cluster hash tag (``kev`` -> ``{kev}``), unless it has one (its
    first ``{`` opens a tag with something in it). Raises ValueError for a prefix of braces
    only: ``{}`` is no hash tag, and the keys would spread over the slots. Prefixes that
    differ only in braces (``kev``, ``{kev}``, ``k{ev``) name the same keys on a cluster."""
    tag = _HASH_TAG.search(prefix)
    if tag is not None and prefix.find("{") == tag.start():
        return prefix
    bare = prefix.replace("{", "").replace("}", "")
    if not bare:
        raise ValueError(f"key prefix {prefix!r} has nothing but braces: no hash tag on a cluster")
    return f"{{{bare}}}"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = DEFAULT_PREFIX
    #: the names are on a Redis Cluster: the prefix is a hash tag and the live channels are
    #: shard channels (SPUBLISH, SSUBSCRIBE)
    cluster: bool = False

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise ValueError(
                f"key prefix {self.prefix!r} must be 1-64 of A-Z a-z 0-9 _ . - : {{ }}"
            )
        if self.cluster and cluster_prefix(self.prefix) != self.prefix:
            raise ValueError(f"key prefix {self.prefix!r} on a cluster needs a hash tag")
        bare = self.prefix.replace("{", "").replace("}", "")
        tag = _HASH_TAG.search(self.prefix)  # on a cluster a partition's tag is <tag>.p<p>.<t>
        if _PARTITION_NAME.search(bare) or (
            tag is not None and _PARTITION_NAME.search(tag.group()[1:-1])
        ):
            raise ValueError(
                f"key prefix {self.prefix!r} ends like the names of a partition of another "
                "deployment (<prefix>.p<number>, on a cluster <prefix>.p<number>.<number>): "
                "choose one that does not"
            )

    @classmethod
    def on(cls, client: object, prefix: str = DEFAULT_PREFIX) -> Keys:
        """The names of ``prefix`` on the Redis ``client`` talks to: hash-tagged
        (:func:`cluster_prefix`) when that is a Redis Cluster."""
        from .connection import is_cluster  # (connection needs nothing of this module)

        cluster = is_cluster(client)
        plain = cls(prefix)  # the prefix as given is checked (and named in the error)
        return cls(cluster_prefix(prefix), cluster) if cluster else plain

    @classmethod
    def for_url(cls, url: str, prefix: str = DEFAULT_PREFIX) -> Keys:
        """As :meth:`on`, from the URL the client is made from."""
        from .connection import is_cluster_url

        cluster = is_cluster_url(url)
        plain = cls(prefix)  # the prefix as given is checked (and named in the error)
        return cls(cluster_prefix(prefix), cluster) if cluster else plain

    @property
    def history(self) -> str:
        """The bounded stream (XADD ... MAXLEN ~ N) every event is written to first."""
        return f"{self.prefix}:events"

    @property
    def epoch(self) -> str:
        """The history's epoch: the id of the first entry it ever held (the publish script
        sets it once). It changes only when Redis lost the history (a restart without
        persistence, a fresh instance), which is how gateways recognise a new history."""
        return f"{self.prefix}:epoch"

    @property
    def channel(self) -> str:
        """The live pub/sub channel; each message is ``<stream id> <msgpack payload>``."""
        return f"{self.prefix}:live"

    @property
    def partitions(self) -> str:
        """How many partitions the deployment has (:mod:`publisher.partitions`), recorded by
        the first process that checks it."""
        return f"{self.prefix}:partitions"

    def publisher_seq(self, publisher_id: str) -> str:
        """One publisher's last applied sequence number (the publish script keeps it, with a
        TTL): what makes retries from its outage buffer exactly-once."""
        return f"{self.prefix}:pubseq:{publisher_id}"

    def publisher_position(self, publisher_id: str) -> str:
        """The last source position a positioned publisher (a bridge) applied, kept without
        a TTL: its place in the source, and what makes its writes exactly-once
        (:mod:`publisher.positioned`)."""
        return f"{self.prefix}:pubpos:{publisher_id}"

    def bridge_lease(self, name: str) -> str:
        """Who is the active bridge ``name`` (one holder at a time, with a TTL)."""
        return f"{self.prefix}:bridge:{name}:lease"

    def bridge_state(self, name: str) -> str:
        """What bridge ``name`` keeps besides its position (a hash: when it last followed its
        source, which wire format, which source instance)."""
        return f"{self.prefix}:bridge:{name}:state"

    @property
    def sync_keypairs(self) -> str:
        """The access keys the identity sync wrote (a set): the only keypairs it may change
        or remove (``gateway sync-identities``, :mod:`gateway.sync`)."""
        return f"{self.prefix}:sync:keypairs"

    @property
    def sync_users(self) -> str:
        """The user ids the identity sync wrote (a set)."""
        return f"{self.prefix}:sync:users"

    @property
    def sync_groups(self) -> str:
        """The groups the identity sync wrote (a set of ``<domain>:<name>``)."""
        return f"{self.prefix}:sync:groups"

    @property
    def sync_last(self) -> str:
        """What the last identity sync did (a hash: at, seconds, counts)."""
        return f"{self.prefix}:sync:last"

    @property
    def sync_lease(self) -> str:
        """Who is the active identity syncer (one holder at a time, with a TTL)."""
        return f"{self.prefix}:sync:lease"

    def probe_channel(self, replica: str) -> str:
        """A gateway replica's own channel for liveness probes of its subscription."""
        return f"{self.prefix}:probe:{replica}"

    def keypair(self, access_key: str) -> str:
        return f"{self.prefix}:keypair:{access_key}"

    def user(self, user_id: str) -> str:
        return f"{self.prefix}:user:{user_id}"

    def group(self, domain: str, name: str) -> str:
        return f"{self.prefix}:group:{domain}:{name}"

    @property
    def keypairs(self) -> str:
        """Set of every access key (for listing)."""
        return f"{self.prefix}:keypairs"

    @property
    def users(self) -> str:
        return f"{self.prefix}:users"

    @property
    def groups(self) -> str:
        """Set of ``<domain>:<name>`` for every group."""
        return f"{self.prefix}:groups"

    def browser_session(self, token_hash: str) -> str:
        return f"{self.prefix}:websession:{token_hash}"

    def browser_sessions_of(self, access_key: str) -> str:
        """The browser sessions of one access key (for the per-key session cap)."""
        return f"{self.prefix}:websessions:{access_key}"

    def key_streams(self, access_key: str) -> str:
        """The open streams of one access key, per gateway replica (the fleet-wide limit)."""
        return f"{self.prefix}:streams:{access_key}"

    def stream_handoff(self, access_key: str, request_digest: str) -> str:
        """Where a drained replica left the SDK stream one signed request opened (a list of
        stream ids, short-lived: gateway.replica.handoff)."""
        return f"{self.prefix}:handoff:{access_key}:{request_digest}"

    def login_throttle(self, kind: str, name: str) -> str:
        """Failed-login counters of one subject (``kind``: account or client address)."""
        return f"{self.prefix}:login-throttle:{kind}:{name}"

    @property
    def identity_changes(self) -> str:
        """The channel every identity and browser-session write publishes a change on."""
        return f"{self.prefix}:identity:changes"

    @property
    def identity_generation(self) -> str:
        """The counter every identity write increments."""
        return f"{self.prefix}:identity:generation"
