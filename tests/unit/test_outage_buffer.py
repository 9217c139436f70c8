"""The publisher's outage buffer (``publisher.buffer``), pure: each overflow policy keeps
what it says and counts what it drops."""

from __future__ import annotations

import pytest

from publisher.buffer import BufferFull, OutageBuffer, Pending


def test_overflow_policies_are_explicit_and_counted() -> None:
    def items(*seqs: int) -> list[Pending]:
        return [Pending(s, b"%d" % s) for s in seqs]

    oldest = OutageBuffer(3, "drop_oldest")
    oldest.add(items(1, 2, 3))
    oldest.add(items(4, 5))
    assert [p.seq for p in oldest.peek(10)] == [3, 4, 5] and oldest.dropped == 2
    oldest.add(items(6, 7, 8, 9))
    assert [p.seq for p in oldest.peek(10)] == [7, 8, 9] and oldest.dropped == 6

    newest = OutageBuffer(3, "drop_newest")
    newest.add(items(1, 2))
    newest.add(items(3, 4, 5))
    assert [p.seq for p in newest.peek(10)] == [1, 2, 3] and newest.dropped == 2

    strict = OutageBuffer(2, "raise")
    strict.add(items(1, 2))
    with pytest.raises(BufferFull, match="capacity 2"):
        strict.add(items(3))
    assert len(strict) == 2
    with pytest.raises(ValueError, match="policy"):
        OutageBuffer(1, "drop_everything")  # type: ignore[arg-type]
