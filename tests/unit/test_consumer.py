"""gateway.consumer's parser and reconnect policy, in process (the same client over real
sockets: tests/integration/test_consumer_hostile.py)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.consumer import BadStream, SSEEvent, SSEParser, backoff


def _feed_split(body: bytes, cuts: list[int]) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    start = 0
    for cut in [*sorted(cuts), len(body)]:
        events += parser.feed(body[start:cut])
        start = cut
    return events


def test_a_character_split_across_reads_stays_one_character() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: caf\xc3") == []
    assert parser.feed(b"\xa9\n\n") == [SSEEvent("message", "café", None)]


@given(
    text=st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12),
)
def test_any_text_cut_anywhere_arrives_intact(text: str, cuts: list[int]) -> None:
    """Every split of the bytes (mid-character, mid-CRLF, mid-field) gives the same event."""
    body = f"id: 7-0\r\nevent: kernel_started\r\ndata: {text}\r\n\r\n".encode()
    events = _feed_split(body, [c % (len(body) + 1) for c in cuts])
    assert events == [SSEEvent("kernel_started", text, "7-0")]


_VALUE = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=12)
_FIELD = st.one_of(
    st.tuples(st.sampled_from(["data", "event", "id", ":"]), _VALUE),
    st.tuples(st.just("retry"), st.integers(0, 10**6).map(str)),
    st.tuples(st.just("retry"), st.sampled_from(["", "x", "-1", "1.5"])),  # ignored
)


@given(
    blocks=st.lists(st.lists(_FIELD, max_size=4), max_size=5),
    line_ends=st.lists(st.sampled_from(["\n", "\r", "\r\n"]), min_size=1, max_size=8),
    bom=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=16),
)
def test_any_stream_parses_as_whatwg_interprets_it_however_it_is_cut(
    blocks: list[list[tuple[str, str]]], line_ends: list[str], bom: bool, cuts: list[int]
) -> None:
    """A model-based check of the parser: random blocks of fields (data, event, id, retry,
    comments) with mixed line ends, fed whole and cut at random bytes, give exactly what the
    WHATWG interpretation of the blocks gives (the oracle below works on the fields, not on
    the text)."""
    lines: list[str] = []
    expected: list[SSEEvent] = []
    last_id: str | None = None
    retry: int | None = None
    comments = 0
    for block in blocks:
        data: list[str] = []
        kind = ""
        for name, value in block:
            lines.append(f"{name}: {value}" if name != ":" else f": {value}")
            if name == "data":
                data.append(value)
            elif name == "event":
                kind = value
            elif name == "id":
                last_id = value
            elif name == "retry" and value.isdigit():
                retry = int(value)
            elif name == ":":
                comments += 1
        lines.append("")  # the blank line that dispatches the block
        if data:
            expected.append(SSEEvent(kind or "message", "\n".join(data), last_id))
    text, previous = "\ufeff" if bom else "", ""
    for n, line in enumerate(lines):
        end = line_ends[n % len(line_ends)]
        if previous == "\r" and end == "\n":
            end = "\r"  # CR then LF is one line end (CRLF), not two
        text += line + end
        previous = end
    body = text.encode()
    every_byte = list(range(1, len(body)))
    for cut_at in ([], [c % (len(body) + 1) for c in cuts], every_byte):
        parser = SSEParser()
        events: list[SSEEvent] = []
        start = 0
        for cut in [*sorted(cut_at), len(body)]:
            events += parser.feed(body[start:cut])
            start = cut
        assert events == expected
        assert (parser.last_event_id, parser.retry_ms, parser.comments) == (
            last_id,
            retry,
            comments,
        )


def test_what_whatwg_does_not_dispatch() -> None:
    parser = SSEParser()
    # a standalone retry block, a ping, an id-only block: no event (httpx-sse alone gives
    # empty "message" events for these, which the official SDKs also stumble on)
    assert parser.feed(b"retry: 2500\n\n: ping\n\nid: 3-0\n\n") == []
    assert (parser.retry_ms, parser.comments, parser.last_event_id) == (2500, 1, "3-0")
    # the id persists onto the next event; an empty data line is still an event
    assert parser.feed(b"data:\n\n") == [SSEEvent("message", "", "3-0")]
    # retry not all digits, an id with NUL: ignored
    assert parser.feed(b"retry: 10s\nretry: -5\nid: 9\x00-0\ndata: x\n\n") == [
        SSEEvent("message", "x", "3-0")
    ]
    assert parser.retry_ms == 2500


def test_line_ends_and_bom() -> None:
    parser = SSEParser()
    assert parser.feed(b"\xef\xbb\xbfdata: a\rdata: b\r") == []
    assert parser.feed(b"\n\r\n") == [SSEEvent("message", "a\nb", None)]


def test_the_resume_id_seeds_the_last_event_id() -> None:
    assert SSEParser(last_event_id="5-0").feed(b"data: x\n\n")[0].id == "5-0"


def test_an_endless_line_or_event_is_refused() -> None:
    parser = SSEParser(max_line=1000)
    parser.feed(b"data: " + b"x" * 900)
    with pytest.raises(BadStream, match="line"):
        parser.feed(b"x" * 200)
    parser = SSEParser(max_line=1000)
    with pytest.raises(BadStream, match="event"):
        for _ in range(20):
            parser.feed(b"data: " + b"y" * 80 + b"\n")


def test_backoff_honours_the_ask_doubles_and_caps() -> None:
    random.seed(1)
    for failures in range(0, 12):
        delay = backoff(3000, failures, 10.0)
        expected = min(10.0, 3.0 * 2 ** max(failures - 1, 0))
        assert expected <= delay <= expected * 1.5, (failures, delay)
    # the server's ask is a floor even above the cap; absurd asks are clamped
    assert 20.0 <= backoff(20_000, 5, 10.0) <= 30.0
    assert backoff(0, 1, 10.0) >= 0.1
    assert backoff(10**12, 1, 10.0) <= 900.0
