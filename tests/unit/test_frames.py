"""SSE frames and stream ids (``gateway.fanout.frames``): the bytes every client receives."""

from __future__ import annotations

import json

import pytest

from gateway.consumer import SSEParser
from gateway.fanout.frames import (
    PING,
    event_frame,
    notice_frame,
    parse_stream_id,
    retry_frame,
    server_close_frame,
)
from tests.support.events import REF


def test_an_event_frame_is_what_backend_ai_sends() -> None:
    frame = event_frame("1700000000000-3", REF.started("ready"))
    assert frame == (
        b"id: 1700000000000-3\nevent: kernel_started\n"
        b'data: {"sessionId":"sess-01","ownerAccessKey":"AKIAOWNER0000000001","reason":"ready"}'
        b"\n\n"
    )
    terminated = event_frame("1-0", REF.terminated("done"))
    [parsed] = SSEParser().feed(terminated)
    assert json.loads(parsed.data)["result"] == "UNDEFINED"  # always present on terminated
    assert "result" not in json.loads(SSEParser().feed(event_frame("1-0", REF.cancelled()))[0].data)


def test_control_frames() -> None:
    parser = SSEParser()
    assert parser.feed(retry_frame(2500) + PING) == [] and parser.retry_ms == 2500
    [close] = parser.feed(server_close_frame("shutdown", 2500))
    assert (close.event, json.loads(close.data)) == (
        "server_close",
        {"reason": "shutdown", "retry": 2500},
    )
    [notice] = parser.feed(notice_frame("5-0", None))
    assert notice.event == "history_truncated"
    assert json.loads(notice.data) == {
        "lastEventId": "5-0",
        "firstAvailableId": None,
        "reason": "trimmed",
    }
    assert parser.comments == 1


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("0-0", (0, 0)), ("1700000000000-3", (1700000000000, 3)), (b"5-12", (5, 12))],
)
def test_stream_ids_parse_to_ordered_pairs(text: str | bytes, parsed: tuple[int, int]) -> None:
    assert parse_stream_id(text) == parsed


@pytest.mark.parametrize(
    "text", ["", "5", "5-", "-5", "a-1", "1-b", "1-2-3", " 1-2", "1-+2", "9" * 21 + "-0"]
)
def test_anything_else_is_not_a_stream_id(text: str) -> None:
    with pytest.raises(ValueError, match="not a stream id"):
        parse_stream_id(text)
    assert parse_stream_id("10-0") > parse_stream_id("9-99")  # numeric, not text, order
