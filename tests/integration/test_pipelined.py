"""A stream whose client pipelines another request behind it, then goes. uvicorn tells only
its newest request of a lost connection, which is the pipelined one: the stream's own waited
in ``receive()`` for good, stayed in the hub (counting against the key's and the process's
stream limits) until the process ended, and its writes went to a closed transport
(LimitedHttpToolsProtocol.connection_lost now tells the stream's request too)."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from publisher import SyncPublisher
from tests.support.gateway_server import RunningGateway
from tests.support.http import raw_stream_request
from tests.support.identities import ALICE, session_of
from tests.support.wait import wait_until

PATH = "/stream/kernel/_/events?sessionId=*"


@pytest.mark.parametrize(
    "pipelined", [b"", b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"], ids=["alone", "pipelined"]
)
@pytest.mark.parametrize("events_after", [False, True], ids=["quiet", "events-after"])
def test_a_stream_leaves_the_hub_when_its_client_goes(
    gateway: RunningGateway,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
    pipelined: bytes,
    events_after: bool,
) -> None:
    hub = gateway.state.hub
    with socket.create_connection(("127.0.0.1", gateway.settings.server.port), timeout=5) as s:
        s.sendall(raw_stream_request(gateway.host, ALICE, PATH) + pipelined)
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        wait_until(lambda: len(hub) == 1, 5, "the stream in the hub")
    if events_after:  # the hub writes to the stream after its client went
        with SyncPublisher.from_url(redis_url) as pub:
            for i in range(20):
                pub.publish(session_of(ALICE, f"after-{i}").started())
    wait_until(lambda: len(hub) == 0, 5, "the stream to leave the hub")
    time.sleep(0.2)  # a writer task that failed would have logged by now
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
