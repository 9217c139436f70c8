"""The stream endpoint end to end: real redis-server, real uvicorn, real sockets."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import anyio
import httpx
import httpx_sse
import msgspec
import pytest
import redis
import redis.asyncio as aredis

from gateway.consumer import SSEEvent, SSEParser, StreamError, open_stream
from gateway.fanout.stats import DROP_KINDS
from gateway.identity.signing import sign_request, signed_headers
from gateway.identity.store import IdentityStore
from publisher import AsyncPublisher, Keys, SyncPublisher
from tests.support.fleet import kernel_events
from tests.support.gateway_server import RunningGateway
from tests.support.http import STREAM_PATH as PATH
from tests.support.http import metric_value, problem, raw_stream_request, stream_as
from tests.support.identities import ALICE, BOB_OFF, DAVE, ROOT, Person, session_of
from tests.support.vector import VERSION
from tests.support.wait import wait_until

StartGateway = Callable[..., RunningGateway]


def _get(
    gw: RunningGateway, target: str, person: Person = ALICE, **header_changes: str | None
) -> httpx.Response:
    date = datetime.now(UTC).isoformat(timespec="seconds")
    headers: dict[str, str | None] = {
        "Date": date,
        "X-BackendAI-Version": VERSION,
        "Authorization": sign_request(
            "GET",
            target,
            date,
            gw.host,
            "application/octet-stream",
            VERSION,
            person.access_key,
            person.secret_key,
        ),
    }
    headers.update(header_changes)
    sent = {k: v for k, v in headers.items() if v is not None}
    return httpx.get(gw.base_url + target, headers=sent, timeout=5)


@pytest.mark.anyio
async def test_headers_come_at_once_and_a_signed_stream_has_no_stray_block(
    gateway: RunningGateway, redis_url: str
) -> None:
    # The official SDKs read a standalone ``retry:`` block as an event with empty data; the
    # manager never sent one: the first block of a signed stream is the first event.
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.settings.server.port)
    writer.write(raw_stream_request(gateway.host, ALICE, PATH + "?sessionId=*"))
    with anyio.fail_after(5):
        raw = await reader.readuntil(b"\r\n\r\n")
        with SyncPublisher.from_url(redis_url) as pub:
            pub.publish(session_of(ALICE, "first").started())
        first_chunk = await reader.readuntil(b"\n\n")
    status_line, *lines = raw.decode().split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines if line)
    assert status_line == "HTTP/1.1 200 OK"
    assert fields["content-type"] == "text/event-stream; charset=utf-8"
    assert fields["cache-control"] == "no-cache"
    assert fields["x-accel-buffering"] == "no"
    assert b"retry:" not in first_chunk and b"event: kernel_started" in first_chunk
    writer.close()


@pytest.mark.anyio
async def test_frames_parse_with_standard_and_browser_parsers(
    gateway: RunningGateway, redis_url: str
) -> None:
    ref = session_of(ALICE, "sess-frames")
    events = [
        ref.enqueued(),
        ref.preparing(),
        ref.pulling("pulling image"),
        ref.creating(),
        ref.started(),
        ref.terminating("user-requested"),
        ref.terminated("user-requested", result="SUCCESS"),
        ref.cancelled("quota"),
        ref.success(),
        ref.failure("oom: exit 137\nsecond line"),
    ]
    target = PATH + "?sessionId=sess-frames"
    headers = signed_headers("GET", target, gateway.host, ALICE.access_key, ALICE.secret_key)
    raw = b""
    async with httpx.AsyncClient(timeout=10) as http:
        async with http.stream("GET", gateway.base_url + target, headers=headers) as resp:
            assert resp.status_code == 200
            async with AsyncPublisher.from_url(redis_url) as pub:
                ids = await pub.publish_many(events)
            async for chunk in resp.aiter_raw():
                raw += chunk
                if raw.count(b"event: kernel_") == len(events):
                    break
    # a standard parser (httpx-sse) ...
    standard = [e for e in _parse_with_httpx_sse(raw) if e.event.startswith("kernel_")]
    # ... and the WHATWG algorithm browsers run, fed byte by byte
    parser = SSEParser()
    browser = [e for b in raw for e in parser.feed(bytes([b])) if e.event.startswith("kernel_")]
    assert parser.retry_ms is None  # a signed stream: no reconnect hint block
    for parsed in (standard, browser):
        assert [e.id for e in parsed] == ids
        assert [e.event for e in parsed] == [e.name for e in events]
        for sse, event in zip(parsed, events, strict=True):
            data = json.loads(sse.data)
            expected = {"sessionId", "ownerAccessKey", "reason"}
            if event.name == "kernel_terminated":
                expected.add("result")
                assert data["result"] == "SUCCESS"
            assert set(data) == expected
            assert data["sessionId"] == "sess-frames"
            assert data["ownerAccessKey"] == ALICE.access_key
            assert data["reason"] == event.reason


def _parse_with_httpx_sse(raw: bytes) -> list[SSEEvent]:
    """httpx-sse's public API over the raw bytes, as a response it could have read."""
    response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=raw)
    return [
        SSEEvent(sse.event, sse.data, sse.id or None)
        for sse in httpx_sse.EventSource(response).iter_sse()
    ]


def test_test_vector_request_is_accepted_by_a_live_gateway(gateway: RunningGateway) -> None:
    # The vector of docs/design.md §4 itself is checked in tests/unit/test_signing.py; here a
    # request signed the same way passes the whole HTTP path (target as sent, Host as sent).
    target = PATH + "?sessionId=mysession-01&group=*"
    with httpx.stream(
        "GET",
        gateway.base_url + target,
        headers=signed_headers("GET", target, gateway.host, ROOT.access_key, ROOT.secret_key),
        timeout=5,
    ) as resp:
        assert resp.status_code == 200


@pytest.mark.parametrize(
    ("changes", "status", "slug"),
    [
        ({"Authorization": None}, 400, "invalid-auth-params"),
        ({"Authorization": "Bearer abc"}, 400, "invalid-auth-params"),
        ({"X-BackendAI-Version": None}, 400, "invalid-auth-params"),
        ({"X-BackendAI-Version": "v1.19990101"}, 400, "invalid-auth-params"),
        ({"Date": None}, 400, "invalid-auth-params"),
        ({"Date": "yesterday"}, 400, "invalid-auth-params"),
    ],
)
def test_auth_parameter_failures(
    gateway: RunningGateway, changes: dict[str, str | None], status: int, slug: str
) -> None:
    got = problem(_get(gateway, PATH, **changes))
    assert got[:2] == (status, slug)


def test_each_auth_failure_has_its_own_answer(gateway: RunningGateway) -> None:
    skewed = (datetime.now(UTC) - timedelta(minutes=16)).isoformat(timespec="seconds")
    signed_skewed = sign_request(
        "GET",
        PATH,
        skewed,
        gateway.host,
        "application/octet-stream",
        VERSION,
        ALICE.access_key,
        ALICE.secret_key,
    )
    wrong_secret = Person("alice", "user", "default", ALICE.access_key, "not-the-secret")
    unknown = Person("x", "user", "default", "AKIAUNKNOWN000000000", "whatever")
    answers = {
        "wrong signature": problem(_get(gateway, PATH, person=wrong_secret)),
        "skewed date": problem(_get(gateway, PATH, Date=skewed, Authorization=signed_skewed)),
        "missing version": problem(_get(gateway, PATH, **{"X-BackendAI-Version": None})),
        "unknown key": problem(_get(gateway, PATH, person=unknown)),
        "inactive key": problem(_get(gateway, PATH, person=BOB_OFF)),
    }
    assert answers["wrong signature"][:2] == (401, "auth-failed")
    assert answers["unknown key"][:2] == (401, "auth-failed")
    assert answers["inactive key"][:2] == (401, "auth-failed")
    assert answers["skewed date"][:2] == (400, "invalid-auth-params")
    assert answers["missing version"][:2] == (400, "invalid-auth-params")
    # an unknown key is answered exactly as a wrong signature (it tells no one which keys
    # exist); every other failure has its own title
    assert answers.pop("unknown key") == answers["wrong signature"]
    titles = [title for _, _, title in answers.values()]
    assert len(set(titles)) == len(titles), titles
    metrics = httpx.get(gateway.base_url + "/metrics").text
    assert "kev_auth_failures_total{" in metrics


@pytest.mark.parametrize(
    ("query", "status", "slug"),
    [
        ("?foo=1", 400, "invalid-api-params"),
        ("?sessionId=a&sessionId=b", 400, "invalid-api-params"),
        ("?sessionId=has%20space", 400, "invalid-api-params"),
        ("?group=a&groupName=b", 400, "invalid-api-params"),
        ("?lastEventId=banana", 400, "invalid-api-params"),
        ("?ownerAccessKey=bad%00key", 400, "invalid-api-params"),
        ("?group=nosuchgroup", 404, "group-not-found"),
        ("?groupName=rteam", 404, "group-not-found"),  # exists, but in the other domain
        ("?ownerAccessKey=AKIABOB0000000000000", 403, "generic-forbidden"),
        # the spelling Backend.AI's SDKs send is the same parameter, with the same rules
        ("?owner_access_key=AKIABOB0000000000000", 403, "generic-forbidden"),
        ("?ownerAccessKey=a&owner_access_key=a", 400, "invalid-api-params"),
        ("?sessionId=x&ownerAccessKey=AKIACAROL00000000000", 403, "generic-forbidden"),
    ],
)
def test_query_errors(gateway: RunningGateway, query: str, status: int, slug: str) -> None:
    got = problem(_get(gateway, PATH + query))
    assert got[:2] == (status, slug)


def test_the_sdk_spelling_of_the_owner_key_is_accepted(gateway: RunningGateway) -> None:
    target = PATH + "?sessionId=s1&owner_access_key=" + ALICE.access_key
    headers = signed_headers("GET", target, gateway.host, ALICE.access_key, ALICE.secret_key)
    with httpx.stream("GET", gateway.base_url + target, headers=headers, timeout=5) as resp:
        assert resp.status_code == 200


def test_domain_admin_may_name_keys_of_its_domain_only(gateway: RunningGateway) -> None:
    with httpx.stream(
        "GET",
        gateway.base_url + PATH + "?ownerAccessKey=" + ALICE.access_key,
        headers=signed_headers(
            "GET",
            PATH + "?ownerAccessKey=" + ALICE.access_key,
            gateway.host,
            DAVE.access_key,
            DAVE.secret_key,
        ),
        timeout=5,
    ) as resp:
        assert resp.status_code == 200
    target = PATH + "?ownerAccessKey=AKIACAROL00000000000"
    assert problem(_get(gateway, target, person=DAVE))[:2] == (403, "generic-forbidden")


def test_other_methods_and_paths(gateway: RunningGateway) -> None:
    resp = httpx.post(gateway.base_url + PATH, timeout=5)
    assert problem(resp)[:2] == (405, "method-not-allowed")
    assert "GET" in resp.headers["allow"]  # RFC 9110: a 405 says what is allowed
    resp = httpx.get(gateway.base_url + "/nope", timeout=5)
    assert problem(resp)[:2] == (404, "generic-not-found")
    assert httpx.get(gateway.base_url + "/health").json() == {"status": "ok"}


@pytest.mark.anyio
async def test_v4_prefix_path_streams_too(gateway: RunningGateway, redis_url: str) -> None:
    async with stream_as(ALICE, gateway.base_url + "/v4" + PATH) as (_, events):
        with SyncPublisher.from_url(redis_url) as pub:
            stream_id = pub.publish(session_of(ALICE, "v4-path").started())
        [event] = await kernel_events(events, 1)
    assert event.id == stream_id


@pytest.mark.anyio
async def test_unknown_session_is_an_open_stream_that_shows_it_later(
    gateway: RunningGateway, redis_url: str
) -> None:
    async with stream_as(ALICE, gateway.base_url, params={"sessionId": "not-yet"}) as (_, events):
        async with AsyncPublisher.from_url(redis_url) as pub:
            await pub.publish(session_of(ALICE, "other").started())
            await pub.publish(session_of(ALICE, "not-yet").started())
        [event] = await kernel_events(events, 1)
    assert json.loads(event.data)["sessionId"] == "not-yet"


@pytest.mark.anyio
async def test_resume_gets_exactly_the_missed_events_then_live(
    gateway: RunningGateway, redis_url: str
) -> None:
    ref = session_of(ALICE, "resume-me")
    async with AsyncPublisher.from_url(redis_url) as pub:
        async with stream_as(ALICE, gateway.base_url) as (_, events):
            first = await pub.publish_many([ref.started(str(i)) for i in range(5)])
            seen = await kernel_events(events, 5)
        assert [e.id for e in seen] == first
        # the client is gone; 50 more are published, some not for alice
        missed = []
        for i in range(50):
            missed.append(await pub.publish(ref.started(f"missed-{i}")))
            await pub.publish(session_of(ROOT, "not-alice").started())
        async with stream_as(ALICE, gateway.base_url, last_event_id=seen[-1].id) as (_, events):
            replayed = await kernel_events(events, 50)
            live_id = await pub.publish(ref.terminated(result="SUCCESS"))
            [live] = await kernel_events(events, 1)
    assert [e.id for e in replayed] == missed
    assert [json.loads(e.data)["reason"] for e in replayed] == [f"missed-{i}" for i in range(50)]
    assert live.id == live_id


@pytest.mark.anyio
async def test_resume_while_publishing_has_no_gap_and_no_duplicate(
    gateway: RunningGateway, redis_url: str
) -> None:
    ref = session_of(ROOT, "busy")
    async with AsyncPublisher.from_url(redis_url) as pub:
        start = await pub.publish(ref.started("start"))
        published: list[str] = [start]
        finished = anyio.Event()

        async def keep_publishing() -> None:
            for i in range(400):
                published.extend(
                    await pub.publish_many([ref.started(f"p{i}"), ref.started(f"q{i}")])
                )
                await anyio.sleep(0.001)
            finished.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_publishing)
            await anyio.sleep(0.2)  # history grows while the client is away
            got: list[str] = []
            async with stream_as(ROOT, gateway.base_url, last_event_id=start) as (_, events):

                async def read() -> None:
                    async for event in events:
                        if event.id is not None and event.event.startswith("kernel_"):
                            got.append(event.id)

                tg.start_soon(read)
                with anyio.fail_after(20):
                    await finished.wait()
                    # The stream delivers in id order: a gap or a duplicate of anything
                    # published before this last event shows before it does.
                    fence = await pub.publish(ref.started("fence"))
                    published.append(fence)
                    while fence not in got:
                        await anyio.sleep(0.01)
                tg.cancel_scope.cancel()
    assert got == published[1:]


@pytest.mark.anyio
async def test_resume_from_an_id_older_than_history_is_told_first(
    gateway: RunningGateway, redis_url: str
) -> None:
    ref = session_of(ALICE, "trimmed")
    with SyncPublisher.from_url(redis_url, maxlen=10, exact_trim=True) as pub:
        old = pub.publish(ref.started("old"))
        kept = pub.publish_many([ref.started(str(i)) for i in range(30)])[-10:]
    async with stream_as(ALICE, gateway.base_url, last_event_id=old) as (_, events):
        got: list[SSEEvent] = []
        with anyio.fail_after(10):
            async for event in events:
                got.append(event)
                if len(got) == 11:
                    break
    assert got[0].event == "history_truncated"
    assert json.loads(got[0].data) == {
        "lastEventId": old,
        "firstAvailableId": kept[0],
        "reason": "trimmed",
    }
    assert [e.id for e in got[1:]] == kept


@pytest.mark.anyio
@pytest.mark.parametrize(
    "last_id",
    [
        "18446744073709551615-18446744073709551615",  # past anything Redis can make
        "18446744073709551615-0",
        "99999999999999-0",  # far ahead of Redis' clock
    ],
)
async def test_a_resume_from_an_id_history_can_never_hold_is_told_and_goes_on(
    gateway: RunningGateway, redis_url: str, last_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The review found 200, then resume_failed and a 27-line traceback per request: an id
    with no successor made the history read fail. Any id ahead of history is told as
    ``ahead`` and the stream goes on with what comes next."""
    ref = session_of(ALICE, "ahead")
    with SyncPublisher.from_url(redis_url) as pub:
        pub.publish(ref.started("before"))
        async with stream_as(ALICE, gateway.base_url, last_event_id=last_id) as (_, events):
            got: list[SSEEvent] = []
            with anyio.fail_after(10):
                async for event in events:
                    got.append(event)
                    if event.event == "history_truncated":
                        after = pub.publish(ref.started("after"))
                    if event.event.startswith("kernel_"):
                        break
    assert got[0].event == "history_truncated"
    assert json.loads(got[0].data)["reason"] == "ahead"
    assert got[-1].id == after  # what came next still arrives
    assert "resume_failed" not in caplog.text and "Traceback" not in caplog.text


def test_a_resume_with_a_bad_id_is_refused(gateway: RunningGateway) -> None:
    resp = _get(gateway, PATH, **{"Last-Event-ID": "12-x"})
    assert problem(resp)[:2] == (400, "invalid-api-params")


@pytest.mark.anyio
async def test_garbage_on_the_channel_is_counted_and_others_still_flow(
    gateway: RunningGateway, redis_url: str
) -> None:
    keys = Keys()
    # a stream open to everything while the garbage comes in
    async with stream_as(ROOT, gateway.base_url) as (_, events):
        with redis.Redis.from_url(redis_url) as raw, SyncPublisher.from_url(redis_url) as pub:
            # a history with its epoch first (the publish script sets it): entries written
            # into an empty one by hand, before any publish, would have none
            first = pub.publish(session_of(ALICE, "before-garbage").started())
            assert [e.id for e in await kernel_events(events, 1)] == [first]
            now_ms = int(time.time() * 1000)
            raw.publish(keys.channel, b"\x00\x01garbage")  # no id at all
            # live messages with ids history does not hold, far or just ahead of the real
            # event's: doorbells that deliver nothing and must hide nothing
            raw.publish(keys.channel, b"99999999999999-0 \xc1\xc1")
            raw.publish(keys.channel, b"%d-0 \xc1\xc1" % (now_ms + 100))
            raw.publish(keys.channel, b"%d-1 " % (now_ms + 100) + json.dumps({"x": 1}).encode())
            raw.publish(keys.channel, b"%d-2 " % (now_ms + 100) + b"\x80" * 100_000)
            # garbage in history itself (no live message): read with the next event
            raw.xadd(keys.history, {"e": b"\xc1\xc1"})
            raw.xadd(keys.history, {"e": msgspec.msgpack.encode({"name": "kernel_started"})})
            raw.xadd(keys.history, {"e": b"\x80" * 100_000})
            real = pub.publish(session_of(ALICE, "after-garbage").started())
        got = await kernel_events(events, 1)
        assert [e.id for e in got] == [real]
    want = {"bad_id": 1, "unproven": 4, "decode": 1, "schema": 1, "oversized": 1}
    # every kind there is; wrong_partition needs more than one partition (its own tests:
    # tests/unit/test_partitions.py, tests/integration/test_spanning_replay.py)
    assert set(want) | {"wrong_partition"} == set(DROP_KINDS)
    samples = {f'kev_payloads_dropped_total{{kind="{kind}"}}': n for kind, n in want.items()}

    def counted() -> dict[str, float]:
        text = httpx.get(gateway.base_url + "/metrics", timeout=5).text
        return {sample: metric_value(text, sample) for sample in samples}

    # PUBLISH returns before the replica has read the messages: poll until it has
    wait_until(lambda: counted() == samples, 5, "every kind of drop counted")


@pytest.mark.anyio
async def test_garbage_between_events_loses_nothing(
    gateway: RunningGateway, redis_url: str
) -> None:
    channel = Keys().channel
    ref = session_of(ALICE, "mixed")
    async with stream_as(ALICE, gateway.base_url) as (_, events):
        ids = []
        with redis.Redis.from_url(redis_url) as raw, SyncPublisher.from_url(redis_url) as pub:
            for i in range(20):
                ids.append(pub.publish(ref.started(str(i))))
                raw.publish(channel, b"\xff" * (i + 1))
        got = await kernel_events(events, 20)
    assert [e.id for e in got] == ids


def test_stream_rejects_when_key_is_at_its_limit(cast: str, start_gateway: StartGateway) -> None:
    gw = start_gateway(max_streams_per_key=2, max_streams=3)
    target = PATH
    opened = []
    with httpx.Client(timeout=5) as http:
        for _ in range(2):
            req = http.build_request(
                "GET",
                gw.base_url + target,
                headers=signed_headers("GET", target, gw.host, ALICE.access_key, ALICE.secret_key),
            )
            opened.append(http.send(req, stream=True))
        assert all(r.status_code == 200 for r in opened)
        assert problem(_get(gw, target))[:2] == (429, "rate-limit-exceeded")
        third = http.send(
            http.build_request(
                "GET",
                gw.base_url + target,
                headers=signed_headers("GET", target, gw.host, ROOT.access_key, ROOT.secret_key),
            ),
            stream=True,
        )
        opened.append(third)
        resp = _get(gw, target, person=DAVE)
        assert problem(resp)[:2] == (503, "service-unavailable")
        assert resp.headers["retry-after"]
        for r in opened:
            r.close()


def test_stream_error_type_is_raised_by_the_client_for_refusals(
    gateway: RunningGateway,
) -> None:
    async def main() -> None:
        async with open_stream(gateway.base_url, access_key=ALICE.access_key, secret_key="wrong"):
            raise AssertionError("unreachable")

    with pytest.raises(StreamError) as info:
        anyio.run(main)
    assert info.value.status == 401


@pytest.mark.anyio
async def test_open_streams_of_a_deactivated_keypair_are_closed(
    gateway: RunningGateway, redis_url: str
) -> None:
    async with stream_as(ALICE, gateway.base_url) as (_, events):
        client = aredis.Redis.from_url(redis_url)
        try:
            await IdentityStore(client, Keys()).set_keypair_active(ALICE.access_key, False)
        finally:
            await client.aclose()
        got: list[SSEEvent] = []
        with anyio.fail_after(5):  # identity_cache_ttl is 0 here: within one 1 s period
            async for event in events:
                got.append(event)
    assert [e.event for e in got] == ["server_close"]
    assert json.loads(got[0].data)["reason"] == "revoked"
    with pytest.raises(StreamError) as refused:
        async with stream_as(ALICE, gateway.base_url):
            pass
    assert refused.value.status == 401
