"""Where a replica's watermark stands in the history Redis holds now: the decision each new
subscription session makes (ARCHITECTURE.md, "Watermark and epoch"), as a pure function of
what the replica knew (:class:`Known`) and what Redis shows (:class:`Found`).

The subscriber (:mod:`.subscriber`) gathers the facts, calls :func:`decide`, and applies the
:class:`Decision`: the watermark to dispatch after, and what to tell every open stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from publisher.bus import Replication

from .frames import GapReason, StreamId, parse_stream_id
from .history import HistoryState

__all__ = ["Decision", "Found", "Known", "Verdict", "carries_on", "decide", "new_history"]

#: what a session found, one per row of the rules table:
#: ``baseline`` the first session: history's end is the watermark;
#: ``same`` the same history, nothing to tell;
#: ``epoch_key_replaced`` another epoch key over the same history (the watermark's own entry
#: is still there): nothing to tell;
#: ``new_history_followed`` a new history all of whose dispatched entries this replica
#: followed live: told, nothing sent twice;
#: ``new_history`` a new history: told, and all of it sent from its start;
#: ``removed`` entries after the watermark were removed (XDEL), or a replica that had
#: dispatched nothing finds entries removed: told ``trimmed``;
#: ``restarted_unseen`` Redis restarted without an append-only file over no history this
#: replica saw, on a node that does not carry on the data of the one it last looked at
#: (:func:`carries_on`): one may have come and gone: told ``reset``;
#: ``past_the_end`` the watermark is past history's end: pulled back, told ``unknown``
Verdict = Literal[
    "baseline",
    "same",
    "epoch_key_replaced",
    "new_history_followed",
    "new_history",
    "removed",
    "restarted_unseen",
    "past_the_end",
]


@dataclass(frozen=True, slots=True)
class Known:
    """What the replica knew before this session."""

    #: a session has run before (else this is the cold start)
    started: bool
    #: the epoch the watermark belongs to (None: the history was empty when last looked at)
    epoch: str | None
    #: the id of the newest event dispatched, or None before the baseline
    watermark: StreamId | None
    #: the first id dispatched since the watermark was set or reset
    first_id: StreamId | None
    #: the Redis run id at the last session
    run_id: str | None
    #: that node's replication id and offset when last looked at (None: unknown)
    replication: Replication | None = None


@dataclass(frozen=True, slots=True)
class Found:
    """What Redis shows at the start of this session."""

    history: HistoryState
    run_id: str | None
    #: the append-only file is on (a restart keeps what it held)
    aof: bool
    #: the watermark's own entry is in the history (False when there is no watermark)
    watermark_in_history: bool
    #: this node's replication ids and offsets (None: unknown)
    replication: Replication | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    #: the watermark from now on
    watermark: StreamId | None
    #: what every open stream is told (``history_truncated``), if anything
    notice: GapReason | None = None
    #: the watermark was reset: every id the hub sees from now on is new, and the first one
    #: dispatched is remembered again
    reset: bool = False


def new_history(known_epoch: str | None, first_id: StreamId | None, epoch: str | None) -> bool:
    """Whether Redis, whose epoch is now ``epoch``, holds another history than the one the
    watermark points into (``known_epoch``, None when that history was empty; ``first_id``
    the first id dispatched from it). The epoch is the first id that history ever held, so
    every id dispatched from it is at or above it."""
    if known_epoch is not None:
        return epoch != known_epoch
    if first_id is None:
        return False  # nothing dispatched since the history was empty: nothing to mix up
    return epoch is None or parse_stream_id(epoch) > first_id


def carries_on(seen: Replication | None, now: Replication | None) -> bool:
    """Whether a node (``now``) holds all the data of the one last looked at (``seen``) up
    to that look: its previous replication id is that node's, held at least to the offset
    seen then. A replica promoted in step with its master (Sentinel, ``CLUSTER FAILOVER``) or
    caught up when its master died; not a restart without persistence (no previous id), nor
    one from an RDB file older than the look, nor another master (a reshard). What it lacks
    of writes after the look is lost as it is when the epoch is known: past the watermark,
    told "unknown"; unseen, not told (ARCHITECTURE.md, "Redis Cluster")."""
    return (
        seen is not None
        and now is not None
        and seen.replid is not None
        and seen.offset is not None
        and now.previous == seen.replid
        and now.previous_until is not None
        and now.previous_until >= seen.offset
    )


def decide(known: Known, found: Found) -> Decision:
    """The row of the rules table this session is in, and what follows from it."""
    state, watermark = found.history, known.watermark
    if not known.started:
        # Cold: whatever history holds now predates this replica; clients resume through
        # their own ids. Read before SUBSCRIBE, so what comes between is gap-filled.
        return Decision("baseline", state.last_id)
    restarted = known.run_id is not None and found.run_id != known.run_id
    if new_history(known.epoch, known.first_id, state.epoch):
        if watermark not in (None, (0, 0)) and found.watermark_in_history:
            return Decision("epoch_key_replaced", watermark)
        if (
            watermark is not None
            and known.first_id is not None
            and state.epoch is not None
            and parse_stream_id(state.epoch) <= known.first_id <= watermark <= state.last_id
        ):
            # Followed live: everything dispatched since the watermark was last set is of the
            # new history (a history that began empty here: nothing to compare the epoch to
            # until now). A watermark in the new history's range alone proves nothing: an id
            # a little ahead in the old history, then its reset, left one there, and the new
            # history's entries below it were skipped (the review found it).
            return Decision("new_history_followed", watermark, "reset")
        return Decision("new_history", (0, 0), "reset", reset=True)
    if (
        watermark is not None and state.max_deleted is not None and state.max_deleted > watermark
    ) or (watermark == (0, 0) and state.trimmed):
        return Decision("removed", watermark, "trimmed")
    if (
        restarted
        and not carries_on(known.replication, found.replication)
        and known.epoch is None
        # a failover to a replica holds the history this replica followed: its epoch is at
        # or below the first id dispatched from it
        and not (
            state.epoch is not None
            and known.first_id is not None
            and parse_stream_id(state.epoch) <= known.first_id
        )
        and not found.aof
    ):
        return Decision("restarted_unseen", watermark, "reset")
    if watermark is not None and watermark > state.last_id:
        return Decision("past_the_end", state.last_id, "unknown", reset=True)
    return Decision("same", watermark)
