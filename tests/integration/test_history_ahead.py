"""One writer of the history (any ACL user allowed to XADD to it: the publisher, a bridge)
writes an id in the future: publishing stops for good, every replica saw nothing wrong, and
clients just saw silence (the security review, #22 finding 1). Now every replica says so
within seconds (/ready 503 naming the cause and the fix, kev_history_ahead_seconds, one log
line), the publisher's error names the cause, and ``gateway reset-history`` (the admin) starts
a new history: streams whose position was in the old one are told history_truncated (reset),
and events flow again, none lost. /health stays 200: a restart cannot fix a shared history."""

from __future__ import annotations

import json
from collections.abc import Callable

import anyio
import httpx
import pytest
import redis

from gateway.cli import main as gateway_main
from gateway.consumer import SSEEvent
from publisher import Keys, PublishRejected, SyncPublisher
from tests.support.gateway_server import RunningGateway
from tests.support.http import stream_as
from tests.support.identities import ROOT, session_of
from tests.support.wait import wait_until

pytestmark = pytest.mark.anyio

#: the largest id a stream can hold, and one far ahead of any clock but not the largest
IDS = ["18446744073709551615-18446744073709551615", "99999999999999-0"]


def _ready(gateway: RunningGateway) -> httpx.Response:
    return httpx.get(gateway.base_url + "/ready", timeout=5)


@pytest.mark.parametrize("future_id", IDS)
async def test_a_future_id_in_history_is_seen_said_and_undone_by_the_admin(
    cast: str, start_gateway: Callable[..., RunningGateway], redis_url: str, future_id: str
) -> None:
    gateway = start_gateway(liveness_timeout=1.0)
    ref = session_of(ROOT, "ahead")
    raw = redis.Redis.from_url(redis_url)
    pub = SyncPublisher.from_url(redis_url)
    async with stream_as(ROOT, gateway.base_url) as (_, events):
        try:
            first = pub.publish(ref.started("before"))
            raw.xadd(Keys().history, {"e": b"x"}, id=future_id)  # the hostile write

            wait_until(lambda: _ready(gateway).status_code == 503, 10, "/ready to fail")
            body = _ready(gateway).json()
            assert "ahead of Redis' clock" in body["history"], body
            assert "gateway reset-history" in body["history"], body
            await anyio.sleep(1.5)  # past liveness_timeout, unready all along
            health = httpx.get(gateway.base_url + "/health", timeout=5)
            assert health.status_code == 200  # no liveness restart over a shared history
            metrics = httpx.get(gateway.base_url + "/metrics", timeout=5).text
            assert "kev_history_ahead_seconds" in metrics

            if future_id == IDS[0]:  # no id is left after it: the publisher says why
                with pytest.raises(PublishRejected, match="gateway reset-history"):
                    pub.publish(ref.started("lost"))
            else:  # ids follow it, all in the future: the watermark goes there too
                pub.publish(ref.started("during"))

            run = anyio.to_thread.run_sync  # the command runs its own event loop
            assert await run(gateway_main, ["reset-history", "--redis-url", redis_url]) == 2
            assert (
                await run(gateway_main, ["reset-history", "--yes", "--redis-url", redis_url]) == 0
            )
            # published at once: the review found these lost (the watermark stayed in the
            # old history's future)
            right_after = [pub.publish(ref.started(f"right-after-{i}")) for i in range(3)]
            wait_until(lambda: _ready(gateway).status_code == 200, 10, "/ready again")
            after = pub.publish(ref.started("after"))
        finally:
            pub.close()  # (the rejected event is in its report, not raised)

        got: list[SSEEvent] = []
        with anyio.fail_after(15):
            async for event in events:
                got.append(event)
                if event.id == after:
                    break
    names = [(e.event, e.id) for e in got]
    assert got[0].id == first
    reset = [json.loads(e.data) for e in got if e.event == "history_truncated"]
    if future_id == IDS[1]:  # the watermark was in the old history: told, sent anew
        assert reset and reset[-1]["reason"] == "reset", names
    else:  # it followed the new history live from its first event: nothing missed, told
        # nothing, nothing twice
        assert [e.id for e in got] == [first, *right_after, after], names
    assert got[-1].id == after  # events flow again, and the stream saw it
    assert set(right_after) <= {e.id for e in got}
    raw.close()
