"""What one history read tells of entries removed after its start (gateway.fanout.history
.ReadFacts.removed_after): every way an entry can go (MAXLEN trimming, XDEL, the stream
emptied), from a watermark and from 0-0 (a new history), and an epoch key that is no id."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.fanout.history import ReadFacts

ids = st.tuples(st.integers(1, 10**6), st.integers(0, 5))


def _facts(*, epoch: str | None, first: tuple[int, int] | None, **rest: object) -> ReadFacts:
    return ReadFacts(
        epoch=epoch,
        generated=rest.get("generated", first or (0, 0)),  # type: ignore[arg-type]
        deleted=rest.get("deleted"),  # type: ignore[arg-type]
        first=first,
    )


@given(epoch=ids, first=ids)
def test_from_0_0_the_oldest_entry_past_the_epoch_is_a_trim(
    epoch: tuple[int, int], first: tuple[int, int]
) -> None:
    facts = _facts(epoch=f"{epoch[0]}-{epoch[1]}", first=first)
    assert facts.removed_after((0, 0)) is (first > epoch)


@pytest.mark.parametrize("epoch", [None, "", "garbage", "12-x"])
def test_an_epoch_that_is_no_id_proves_no_trim_and_raises_nothing(epoch: str | None) -> None:
    assert not _facts(epoch=epoch, first=(5, 0)).removed_after((0, 0))


def test_from_0_0_a_deletion_or_an_emptied_stream_is_a_removal() -> None:
    assert _facts(epoch="5-0", first=(5, 0), deleted=(6, 0)).removed_after((0, 0))
    assert _facts(epoch="5-0", first=None, generated=(9, 0)).removed_after((0, 0))
    assert not _facts(epoch=None, first=None, generated=(0, 0)).removed_after((0, 0))


@given(start=ids, first=ids)
def test_from_a_watermark_the_oldest_entry_past_it_is_a_trim(
    start: tuple[int, int], first: tuple[int, int]
) -> None:
    assert _facts(epoch="1-0", first=first).removed_after(start) is (first > start)
