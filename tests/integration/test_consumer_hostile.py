"""The shipped client (gateway.consumer) against hostile and slow servers: real sockets on
loopback (tests/support/hostile_sse.py), each server wrong in one way. What the client must do:
decode UTF-8 split anywhere, notice a frozen link, wait what the server asks before it comes
back (and longer when attempts keep failing), resume with Last-Event-ID, and never take
garbage for events."""

from __future__ import annotations

import asyncio
import json
import time

import anyio
import pytest

from gateway.consumer import (
    BadStream,
    DeadLink,
    KernelEventStream,
    RetryNotice,
    SSEEvent,
    StreamDropped,
    StreamError,
    open_stream,
)
from tests.support.hostile_sse import SSE_HEAD, Visit, chunked, hostile_server, send_slowly

pytestmark = pytest.mark.anyio

#: reasons a terminal or a scheduler writes in many scripts; 2-, 3- and 4-byte UTF-8
REASONS = [
    "café",
    "naïve résumé",
    "잠시 중단",
    "ошибка памяти",
    "日本語の理由",
    "🚀 launch 🧪",
    "ℵ∞",
]


def _event(i: int, reason: str, name: str = "kernel_started") -> bytes:
    data = json.dumps(
        {"sessionId": f"s{i}", "ownerAccessKey": "AK", "reason": reason}, ensure_ascii=False
    )
    return f"id: {i}-0\nevent: {name}\ndata: {data}\n\n".encode()


async def _collect(stream: KernelEventStream, n: int, timeout: float) -> list[SSEEvent]:
    got: list[SSEEvent] = []
    with anyio.fail_after(timeout):
        async for event in stream:
            got.append(event)
            if len(got) >= n:
                break
    return got


async def _run_for(stream: KernelEventStream, seconds: float) -> list[SSEEvent]:
    got: list[SSEEvent] = []
    with anyio.move_on_after(seconds):
        async for event in stream:
            got.append(event)
    return got


def _stream(url: str, **options: object) -> KernelEventStream:
    return KernelEventStream(url, access_key="AKIAHOSTILE", secret_key="s" * 40, **options)  # type: ignore[arg-type]


# -- UTF-8 split across reads ----------------------------------------------------------------


async def test_utf8_split_at_every_byte_arrives_whole() -> None:
    """Every byte its own TCP write: 40 events with non-ASCII reasons, none corrupted (the old
    parser decoded each read alone: 8-14 of 40 came back with U+FFFD through nginx)."""
    reasons = [REASONS[i % len(REASONS)] + f" #{i}" for i in range(40)]
    body = b"".join(_event(i, r) for i, r in enumerate(reasons))

    async def split(visit: Visit, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(SSE_HEAD)
        await send_slowly(w, body, piece=1)
        await asyncio.sleep(30)

    async with hostile_server(split) as server:
        got = await _collect(_stream(server.url), 40, 20)
    assert [json.loads(e.data)["reason"] for e in got] == reasons
    assert not [e for e in got if "\ufffd" in e.data]


async def test_invalid_utf8_spoils_only_its_own_event() -> None:
    """Bytes that are not UTF-8 become U+FFFD in that event; the decoder is not left stuck
    mid-character, so the next event is intact."""
    bad = b'id: 1-0\nevent: kernel_started\ndata: {"sessionId":"s","ownerAccessKey":"AK",'
    bad += b'"reason":"\xc3\x28 \xff\xfe \xe2\x82"}\n\n'

    async def invalid(visit: Visit, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(SSE_HEAD + chunked(bad) + chunked(_event(2, "après")))
        await w.drain()
        await asyncio.sleep(30)

    async with hostile_server(invalid) as server:
        first, second = await _collect(_stream(server.url), 2, 10)
    assert "\ufffd" in first.data and json.loads(second.data)["reason"] == "après"


# -- a frozen link ---------------------------------------------------------------------------


async def test_a_frozen_stream_is_noticed_and_resumed_with_last_event_id() -> None:
    """Headers, one event, then nothing on a socket that stays open (a frozen proxy): after
    ``idle_timeout`` the client reconnects with the last id it had."""

    async def freeze(visit: Visit, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        n = len(server.visits)
        w.write(SSE_HEAD + chunked(b"retry: 100\n\n" + _event(n, f"before freeze {n}")))
        await w.drain()
        await asyncio.sleep(60)  # frozen: the socket is open, nothing comes

    notices: list[RetryNotice] = []
    async with hostile_server(freeze) as server:
        stream = _stream(server.url, idle_timeout=1.0, on_retry=notices.append)
        started = time.monotonic()
        got = await _collect(stream, 2, 10)
        detected = time.monotonic() - started
    assert [e.id for e in got] == ["1-0", "2-0"]
    assert "last-event-id" not in server.visits[0].head
    assert server.visits[1].head["last-event-id"] == "1-0"
    assert isinstance(notices[0].error, DeadLink)
    # one idle timeout, then the server's 100 ms (+ jitter): not the 45 s default, not never
    assert 1.0 <= detected < 2.5, detected


async def test_a_server_that_never_answers_is_a_dead_link() -> None:
    async def mute(visit: Visit, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(60)

    async with hostile_server(mute) as server:
        with anyio.fail_after(5), pytest.raises(DeadLink):
            async with open_stream(server.url, idle_timeout=0.5):
                pass


async def test_pings_keep_a_quiet_stream_alive() -> None:
    """Comments are bytes: a stream of pings only is alive, however long it is quiet."""

    async def pings(visit: Visit, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(SSE_HEAD)
        for _ in range(100):
            w.write(chunked(b": ping\n\n"))
            await w.drain()
            await asyncio.sleep(0.2)

    async with hostile_server(pings) as server:
        got = await _run_for(_stream(server.url, idle_timeout=0.6), 2.5)
    assert got == [] and len(server.visits) == 1


# -- retry: the server's ask, backoff, jitter ------------------------------------------------


async def _closes_at_once(
    visit: Visit, reader: asyncio.StreamReader, w: asyncio.StreamWriter
) -> None:
    w.write(SSE_HEAD + chunked(b"retry: 3000\n\n") + b"0\r\n\r\n")
    await w.drain()


async def _server_close_3s(
    visit: Visit, reader: asyncio.StreamReader, w: asyncio.StreamWriter
) -> None:
    close = b'event: server_close\ndata: {"reason":"shutdown","retry":3000}\n\n'
    w.write(SSE_HEAD + chunked(close) + b"0\r\n\r\n")
    await w.drain()


@pytest.mark.parametrize("handler", [_closes_at_once, _server_close_3s], ids=["field", "close"])
async def test_the_servers_retry_is_honoured(handler: object) -> None:
    """A server that asks for 3 s and ends every stream at once: over 6 s the client comes at
    most 3 times (the old client came 116 times), never sooner than 3 s apart."""
    async with hostile_server(handler) as server:  # type: ignore[arg-type]
        await _run_for(_stream(server.url), 6.0)
    assert 2 <= len(server.visits) <= 3, server.gaps()
    assert all(gap >= 2.95 for gap in server.gaps()), server.gaps()


async def test_failed_attempts_back_off_exponentially_with_jitter() -> None:
    """Connections closed before any answer, no retry asked: 1 s (the default), then doubling,
    each with up to 50 % jitter, capped at ``max_backoff``."""

    async def slam(visit: Visit, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        return  # closed without a word

    notices: list[RetryNotice] = []
    async with hostile_server(slam) as server:
        await _run_for(_stream(server.url, max_backoff=2.5, on_retry=notices.append), 9.0)
    delays = [n.delay for n in notices]
    assert all(isinstance(n.error, StreamDropped) for n in notices)
    assert [n.attempt for n in notices[:3]] == [1, 2, 3]
    assert 1.0 <= delays[0] <= 1.5 and 2.0 <= delays[1] <= 3.0
    assert all(2.5 <= d <= 3.75 for d in delays[2:])  # capped (before jitter)
    assert len(set(delays)) == len(delays)  # jittered: no two clients in step
    assert 3 <= len(server.visits) <= 5, server.gaps()


# -- garbage ---------------------------------------------------------------------------------


async def test_garbage_instead_of_http_is_a_drop_retried_with_backoff() -> None:
    async def junk(visit: Visit, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"\x00\xffSSH-2.0-OpenSSH_9.6\r\n\x16\x03\x01 garbage\r\n\r\n")
        await w.drain()

    notices: list[RetryNotice] = []
    async with hostile_server(junk) as server:
        got = await _run_for(_stream(server.url, on_retry=notices.append), 2.0)
    assert got == [] and 1 <= len(server.visits) <= 2
    assert notices and isinstance(notices[0].error, StreamDropped)


async def test_a_line_without_end_is_cut_off() -> None:
    """A server streaming one endless line must not fill the client's memory."""

    async def endless(visit: Visit, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(SSE_HEAD)
        for _ in range(40):
            w.write(chunked(b"data: " + b"x" * 65536))
            await w.drain()
        await asyncio.sleep(30)

    async with hostile_server(endless) as server:
        with anyio.fail_after(10), pytest.raises(BadStream, match="line over"):
            async with open_stream(server.url) as (_, events):
                async for _ in events:
                    pass


async def test_bad_chunk_framing_is_a_drop() -> None:
    async def framing(visit: Visit, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(SSE_HEAD + chunked(_event(1, "ok")) + b"zz\r\nnot a chunk\r\n")
        await w.drain()
        await asyncio.sleep(30)

    got: list[SSEEvent] = []
    async with hostile_server(framing) as server:
        with anyio.fail_after(10), pytest.raises(StreamDropped):
            async with open_stream(server.url) as (_, events):
                async for event in events:
                    got.append(event)
    assert [e.id for e in got] == ["1-0"]  # what came before the damage, and nothing else


@pytest.mark.parametrize(
    ("head", "retried"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 6\r\n\r\n<html>", False),
        (b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 4\r\n\r\nnope", False),
        (b"HTTP/1.1 503 Busy\r\nretry-after: 2\r\ncontent-length: 4\r\n\r\nbusy", True),
    ],
    ids=["html", "401", "503"],
)
async def test_refusals_raise_or_wait_retry_after(head: bytes, retried: bool) -> None:
    async def answer(visit: Visit, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(head)
        await w.drain()

    notices: list[RetryNotice] = []
    async with hostile_server(answer) as server:
        if retried:
            await _run_for(_stream(server.url, on_retry=notices.append), 3.6)
            assert len(server.visits) == 2 and 2.0 <= server.gaps()[0] <= 3.1
            assert isinstance(notices[0].error, StreamError) and notices[0].error.status == 503
        else:
            with anyio.fail_after(5), pytest.raises(StreamError):
                await _run_for(_stream(server.url), 3)
            assert len(server.visits) == 1
