"""The hub, in process: index dispatch, one shared frame, duplicates, garbage, eviction,
the timer, replay hold and floor, coalesced direct writes. No sockets; a fake clock."""

from __future__ import annotations

import asyncio
import uuid

import msgspec
import pytest

from gateway.fanout.filters import Filter
from gateway.fanout.frames import PING, event_frame
from gateway.fanout.hub import Hub
from gateway.settings import FanoutSettings
from publisher.schema import KernelEvent, SessionRef, encode_event
from tests.support.fakes import FakeClock, FakeDirect, FakeSink


def _ref(
    session: str = "s1", key: str = "AK1", user: str = "u1", domain: str = "d1", group: str = "g1"
) -> SessionRef:
    return SessionRef(
        session_id=session,
        owner_access_key=key,
        owner_user_id=user,
        domain=domain,
        group=group,
        session_uuid=uuid.UUID(int=7),
        kernel_id=uuid.UUID(int=8),
    )


def _hub(cap: int = 64 * 1024, clock: FakeClock | None = None) -> Hub:
    settings = FanoutSettings(
        buffer_cap=cap, write_deadline=2.0, ping_interval=15.0, retry_jitter_ms=0, max_lag=0.0
    )
    return Hub(settings, clock=clock or FakeClock())


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def next(self) -> bytes:
        self.n += 1
        return f"{1000 + self.n}-0".encode()


def _publish(hub: Hub, ids: Counter, event: KernelEvent) -> bytes:
    raw = ids.next()
    hub.publish(raw, encode_event(event))
    return raw


def test_dispatch_reaches_exactly_the_matching_clients() -> None:
    hub, ids = _hub(), Counter()
    clients = {
        "all": hub.new_connection(Filter(), "root"),
        "domain1": hub.new_connection(Filter(domain="d1"), "adm"),
        "domain2": hub.new_connection(Filter(domain="d2"), "adm2"),
        "user1": hub.new_connection(Filter(owner_user_id="u1"), "AK1"),
        "session": hub.new_connection(Filter(session_id="s1", owner_access_key="AK1"), "AK1"),
        "other_owner": hub.new_connection(Filter(session_id="s1", owner_access_key="AK2"), "AK2"),
        "group": hub.new_connection(Filter(group="g1"), "root"),
        "group2": hub.new_connection(Filter(group="g2"), "root"),
    }
    for client in clients.values():
        hub.register(client)
    event = _ref().started()
    raw = _publish(hub, ids, event)
    frame = event_frame(raw.decode(), event)
    got = {name for name, c in clients.items() if c.take() == frame}
    assert got == {"all", "domain1", "user1", "session", "group"}
    assert hub.stats.deliveries == 5
    assert hub.stats.events_in == hub.stats.events_matched == 1


def test_one_frame_object_is_shared_by_all_clients() -> None:
    hub, ids = _hub(), Counter()
    a, b = hub.new_connection(Filter(), "x"), hub.new_connection(Filter(domain="d1"), "y")
    hub.register(a)
    hub.register(b)
    _publish(hub, ids, _ref().started())
    assert a.take() is b.take()


def test_duplicates_and_older_ids_are_dropped() -> None:
    hub = _hub()
    client = hub.new_connection(Filter(), "x")
    hub.register(client)
    payload = encode_event(_ref().started())
    hub.publish(b"5-1", payload)
    hub.publish(b"5-1", payload)
    hub.publish(b"5-0", payload)
    hub.publish(b"6-0", payload)
    assert client.take().count(b"event: kernel_started") == 2
    assert hub.stats.duplicates == 2


@pytest.mark.parametrize(
    ("raw_id", "payload", "kind"),
    [
        (b"no-space-here", b"", "bad_id"),
        (b"abc-1", encode_event(_ref().started()), "bad_id"),
        (b"18446744073709551616-0", encode_event(_ref().started()), "bad_id"),
        (b"7-0", b"\xc1\xc1garbage", "decode"),
        (b"7-0", msgspec.msgpack.encode({"name": "kernel_started"}), "schema"),
        (b"7-0", msgspec.msgpack.encode({"name": "kernel_x", "session_id": "s"}), "schema"),
        (b"7-0", b"\x80" * 70_000, "oversized"),
        (b"7-0", None, "oversized"),
    ],
)
def test_garbage_is_counted_and_never_stops_dispatch(
    raw_id: bytes, payload: bytes | None, kind: str
) -> None:
    hub = _hub()
    client = hub.new_connection(Filter(), "x")
    hub.register(client)
    hub.publish(raw_id, payload)
    assert hub.stats.dropped[kind] == 1
    # an entry of history is read once, whatever its payload; what is no id moves nothing
    assert hub.last_id == (None if kind == "bad_id" else (7, 0))
    hub.publish(b"8-0", encode_event(_ref().started()))
    assert b"id: 8-0" in client.take()


def test_a_client_over_its_cap_is_evicted_and_others_keep_receiving() -> None:
    hub, ids = _hub(cap=1024), Counter()
    slow, fast = hub.new_connection(Filter(), "slow"), hub.new_connection(Filter(), "fast")
    hub.register(slow)
    hub.register(fast)
    for _ in range(20):
        _publish(hub, ids, _ref().started("x" * 40))
        fast.take()  # fast keeps reading, slow never does
    assert slow.closed and slow.close_reason == "slow_consumer"
    assert slow.buffered == 0 and slow.take() == b""
    assert not fast.closed
    assert hub.stats.evictions["slow_consumer"] == 1


def test_replay_holds_live_frames_and_releases_only_newer_ones() -> None:
    hub, ids = _hub(), Counter()
    client = hub.new_connection(Filter(), "x")
    client.begin_replay()
    hub.register(client)
    first = _publish(hub, ids, _ref().started("live-1"))
    second = _publish(hub, ids, _ref().started("live-2"))
    assert client.take() == b""  # held while replay runs
    client.push(b"replayed\n\n")
    assert client.take() == b"replayed\n\n"
    # replay covered ids up to `first`; only `second` is released
    client.end_replay((int(first.split(b"-")[0]), 0))
    released = client.take()
    assert b"live-2" in released and b"live-1" not in released
    assert second in released
    assert client.buffered == 0


async def _no_send(message: object) -> None:
    raise AssertionError("nothing is sent in this test")


@pytest.mark.anyio
async def test_timer_pings_and_evicts_stuck_writers() -> None:
    clock = FakeClock()
    hub = _hub(clock=clock)
    idle, stuck = hub.new_connection(Filter(), "idle"), hub.new_connection(Filter(), "stuck")
    direct = FakeDirect()
    stuck.attach(_no_send, direct)
    hub.register(idle)
    hub.register(stuck)
    stuck.writing_since = clock.now
    clock.now += 1.0
    hub.tick(ping=True)
    assert idle.take() == PING and not stuck.closed
    clock.now += 1.5  # 2.5 s into the write, deadline is 2 s
    hub.tick(ping=False)
    assert stuck.closed and stuck.close_reason == "write_timeout"
    assert direct.transport.aborted and stuck.abort_requested
    assert hub.stats.evictions["write_timeout"] == 1
    assert idle.take() == b""
    await stuck.finish()


@pytest.mark.anyio
async def test_one_streams_failure_in_the_timer_never_skips_the_others() -> None:
    """A stuck stream whose abort raises (as uvloop's socket of a closed connection did:
    ValueError from setsockopt on fd -1, suppressed since) stays closed (``write_timeout``,
    as the round had begun); every other stream still gets its round: here, the ping."""

    class Broken(FakeDirect):
        def __init__(self) -> None:
            super().__init__()
            self.transport.abort = self._boom  # type: ignore[method-assign]

        def _boom(self) -> None:
            raise ValueError("negative file descriptor")

    clock = FakeClock()
    hub = _hub(clock=clock)
    stuck = [hub.new_connection(Filter(), f"stuck{i}") for i in range(2)]
    idle = [hub.new_connection(Filter(), f"idle{i}") for i in range(3)]
    for client in stuck:
        client.attach(_no_send, Broken())
        client.writing_since = clock.now
    for client in (*stuck, *idle):
        hub.register(client)
    clock.now += 2.5  # past the 2 s deadline
    hub.tick(ping=True)
    assert all(c.closed and c.close_reason == "write_timeout" for c in stuck)
    assert all(c.take() == PING for c in idle)
    for client in stuck:
        await client.finish()


def test_unregister_cleans_every_index() -> None:
    hub = _hub()
    clients = [
        hub.new_connection(Filter(session_id=f"s{i}", owner_access_key="k"), "k")
        for i in range(100)
    ]
    for client in clients:
        hub.register(client)
    assert hub.streams_of("k") == 100
    for client in clients:
        hub.unregister(client)
        hub.unregister(client)  # idempotent
    assert len(hub) == 0 and hub.streams_of("k") == 0
    assert hub._index == {}


def test_live_frames_that_replay_already_sent_are_dropped_when_they_arrive_late() -> None:
    # History runs ahead of the channel: replay read ids 1-0..3-0 from the stream while their
    # PUBLISHes were still on the way to this process.
    hub = _hub()
    client = hub.new_connection(Filter(), "x")
    client.begin_replay()
    hub.register(client)
    client.end_replay((3, 0))
    payload = encode_event(_ref().started())
    for raw in (b"2-0", b"3-0", b"4-0", b"5-0"):
        hub.publish(raw, payload)
    sent = client.take()
    assert b"id: 2-0" not in sent and b"id: 3-0" not in sent
    assert sent.count(b"event: kernel_started") == 2


@pytest.mark.anyio
async def test_direct_clients_get_one_coalesced_write_per_flush() -> None:
    hub, ids = _hub(), Counter()
    sinks = [FakeSink() for _ in range(3)]
    clients = [hub.new_connection(Filter(), f"k{i}") for i in range(3)]
    for client, sink in zip(clients, sinks, strict=True):
        hub.register(client)
        client.go_direct(sink, hub.notify)
    for i in range(5):
        _publish(hub, ids, _ref().started(str(i)))
    assert all(not s.writes for s in sinks)  # nothing until the loop runs the flush
    await asyncio.sleep(0)
    for sink in sinks:
        assert len(sink.writes) == 1 and sink.writes[0].count(b"event: kernel_started") == 5
    assert sinks[0].writes[0] == sinks[1].writes[0]


@pytest.mark.anyio
async def test_a_paused_direct_client_is_left_to_its_writer_task() -> None:
    hub, ids = _hub(), Counter()
    sink, client = FakeSink(), hub.new_connection(Filter(), "k")
    hub.register(client)
    client.go_direct(sink, hub.notify)
    sink.blocked = True
    waiting = asyncio.ensure_future(client._wait())
    await asyncio.sleep(0)
    assert not waiting.done()
    _publish(hub, ids, _ref().started())
    await asyncio.wait_for(waiting, 1)  # the writer task is woken to take it (and await drain)
    assert not sink.writes
    assert b"kernel_started" in client.take()
    client.close("shutdown")
    _publish(hub, ids, _ref().started())
    await asyncio.sleep(0)
    assert not sink.writes
