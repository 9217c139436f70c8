"""The watermark's rules table (ARCHITECTURE.md, "Watermark and epoch"), row by row, against
the pure decision each subscription session makes (``gateway.fanout.watermark.decide``); the
same rows run against real Redis restarts and failovers in tests/system/test_watermark.py and
the model-based tests/system/test_model.py."""

from __future__ import annotations

import pytest

from gateway.fanout.history import HistoryState
from gateway.fanout.watermark import Decision, Found, Known, decide
from publisher.bus import Replication


def _history(
    *,
    epoch: str | None = "100-0",
    last: tuple[int, int] = (200, 0),
    first: tuple[int, int] | None = (100, 0),
    trimmed: bool = False,
    max_deleted: tuple[int, int] | None = None,
) -> HistoryState:
    return HistoryState(epoch, last, first, trimmed, max_deleted)


#: a replica that has followed history 100-0 up to 150-0, on Redis run "r1"
FOLLOWING = Known(started=True, epoch="100-0", watermark=(150, 0), first_id=(120, 0), run_id="r1")


def _found(history: HistoryState, *, run_id: str = "r1", aof: bool = False,
           in_history: bool = True, replication: Replication | None = None) -> Found:  # fmt: skip
    return Found(history, run_id, aof, in_history, replication)


#: the node last looked at: replication id "id-1", its stream at offset 500 then
SEEN = Replication("id-1", 500, None, None)
#: a history that was empty when last looked at, and holds one event now
EMPTY_THEN_ONE = _history(epoch="120-0", first=(120, 0), last=(120, 0))


ROWS: dict[str, tuple[Known, Found, Decision]] = {
    "the first session takes history's end as the watermark": (
        Known(False, None, None, None, None),
        _found(_history(last=(200, 0))),
        Decision("baseline", (200, 0)),
    ),
    "the same history: nothing to tell": (
        FOLLOWING,
        _found(_history()),
        Decision("same", (150, 0)),
    ),
    "another epoch, the watermark's entry still there: the key was replaced, not history": (
        FOLLOWING,
        _found(_history(epoch="130-0"), in_history=True),
        Decision("epoch_key_replaced", (150, 0)),
    ),
    "another epoch at or below the watermark, dispatched from before it: a new history, "
    "sent from its start (an id a little ahead, then the history's reset)": (
        FOLLOWING,
        _found(_history(epoch="140-0", first=(140, 0)), in_history=False),
        Decision("new_history", (0, 0), "reset", reset=True),
    ),
    "another epoch at or below all that was dispatched: a new history followed live, told": (
        Known(True, "100-0", (150, 0), (145, 0), "r1"),
        _found(_history(epoch="140-0", first=(140, 0)), in_history=False),
        Decision("new_history_followed", (150, 0), "reset"),
    ),
    "another epoch below a watermark past its end (the old history's future id): a new "
    "history, sent from its start": (
        Known(True, "100-0", (99999999999999, 1), (120, 0), "r1"),
        _found(_history(epoch="140-0", first=(140, 0), last=(160, 0)), in_history=False),
        Decision("new_history", (0, 0), "reset", reset=True),
    ),
    "another epoch above the watermark: a new history, told, sent from its start": (
        FOLLOWING,
        _found(_history(epoch="300-0", first=(300, 0), last=(310, 0)), in_history=False),
        Decision("new_history", (0, 0), "reset", reset=True),
    ),
    "no epoch any more (Redis lost its data): a new history": (
        FOLLOWING,
        _found(_history(epoch=None, first=None, last=(0, 0)), in_history=False),
        Decision("new_history", (0, 0), "reset", reset=True),
    ),
    "an XDEL after the watermark: told trimmed": (
        FOLLOWING,
        _found(_history(max_deleted=(160, 0))),
        Decision("removed", (150, 0), "trimmed"),
    ),
    "a replica that dispatched nothing finds entries removed: told trimmed": (
        Known(True, "100-0", (0, 0), None, "r1"),
        _found(_history(trimmed=True), in_history=False),
        Decision("removed", (0, 0), "trimmed"),
    ),
    "Redis restarted without AOF over no history seen: one may have come and gone": (
        Known(True, None, (0, 0), None, "r1"),
        _found(_history(epoch=None, first=None, last=(0, 0)), run_id="r2", in_history=False),
        Decision("restarted_unseen", (0, 0), "reset"),
    ),
    "the same restart with an append-only file: nothing was lost": (
        Known(True, None, (0, 0), None, "r1"),
        _found(
            _history(epoch=None, first=None, last=(0, 0)), run_id="r2", aof=True, in_history=False
        ),
        Decision("same", (0, 0)),
    ),
    "a restart over no history seen, a new replication id and no previous one": (
        Known(True, None, (0, 0), None, "r1", SEEN),
        _found(EMPTY_THEN_ONE, run_id="r2", replication=Replication("id-2", 0, None, None)),
        Decision("restarted_unseen", (0, 0), "reset"),
    ),
    "a restart over no history seen from an RDB file older than the last look (its previous "
    "id is the old one, held only up to the file's offset)": (
        Known(True, None, (0, 0), None, "r1", SEEN),
        _found(EMPTY_THEN_ONE, run_id="r2", replication=Replication("id-2", 0, "id-1", 499)),
        Decision("restarted_unseen", (0, 0), "reset"),
    ),
    "a node whose current id is the one seen is no proof (only a previous id is)": (
        Known(True, None, (0, 0), None, "r1", SEEN),
        _found(EMPTY_THEN_ONE, run_id="r2", replication=Replication("id-1", 900, None, None)),
        Decision("restarted_unseen", (0, 0), "reset"),
    ),
    "a failover over no history seen: the promoted replica held the old master's stream up "
    "to the last look, its data carries on: nothing to tell": (
        Known(True, None, (0, 0), None, "r1", SEEN),
        _found(EMPTY_THEN_ONE, run_id="r2", replication=Replication("id-2", 510, "id-1", 500)),
        Decision("same", (0, 0)),
    ),
    "a failover to a replica that holds the history followed: nothing to tell": (
        Known(True, None, (120, 0), (120, 0), "r1"),
        _found(_history(epoch="120-0", first=(120, 0), last=(120, 0)), run_id="r2"),
        Decision("same", (120, 0)),
    ),
    "the watermark past history's end: pulled back, told unknown": (
        Known(True, "100-0", (900, 0), (120, 0), "r1"),
        _found(_history(last=(200, 0)), in_history=False),
        Decision("past_the_end", (200, 0), "unknown", reset=True),
    ),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_each_row_of_the_rules_table(row: str) -> None:
    known, found, decision = ROWS[row]
    assert decide(known, found) == decision


def test_every_verdict_has_a_row() -> None:
    from typing import get_args

    from gateway.fanout.watermark import Verdict

    assert {d.verdict for _, _, d in ROWS.values()} == set(get_args(Verdict))
