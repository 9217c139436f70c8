"""Every SDK generation, at the gateway's defaults, against real replicas (issue 23, item 4).

Each generation of the official ``backend.ai-client`` (:data:`tests.support.sdk.GENERATIONS`:
19.9.10 and 22.3.2 on Python 3.8, 23.9.10 on 3.11, 26.9.6 on 3.13) in its cached venv, its
CLI (``backend.ai events NAME``) and its Python listener, with nothing configured but the
endpoint and the keypair:

* it negotiates the version of its own generation (``api_version=auto``: 19.09 speaks v4 and
  does not negotiate; 22.03 v6, 23.09 v7, 26.x v9), prints no version warning, and gets the
  session's whole lifecycle, in order, with nothing of other sessions: the v4 names and data
  for 19.09, the v5+ ones (``session_enqueued``, ``sessionName``, ``sessionId`` the UUID, ...)
  for the others; 26.x's ``session events --wait session_success`` and ``--wait
  batch_session_result`` return (0);
* a wrong secret is a clear 401 (``Signature mismatch``);
* behind the shipped nginx, the replica serving it gets SIGTERM mid-stream: from 20.03 on the
  SDK reconnects by itself (5 s later) with the same request, the new replica resumes it where
  it stood (gateway.replica.handoff), and every event published before, between its two
  connections (the replica gone, the SDK not back yet) and after reaches it once, in order;
  19.09's CLI ends with the stream (status 0, every event it was sent), as the README says,
  and so does its Python listener.

The SDKs run in subprocesses only (``tests/support/sdk.py``). The tests but the SIGTERM one
share one gateway process and a Redis of the module's own (one start instead of one per test):
each starts once the previous one's streams have closed, and signed streams start live, so
what earlier tests published never shows."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import anyio
import httpx
import pytest

from publisher import KernelEvent, SessionRef, SyncPublisher
from tests.support.gateway_server import RunningGateway, gateway_settings, spawn_gateway
from tests.support.identities import ALICE, BOB, seed, session_of
from tests.support.proxies import needs_nginx, run_nginx
from tests.support.redis_server import RedisServer
from tests.support.sdk import GENERATIONS, Child, Client, Generation, Sdk, build_sdk
from tests.support.wait import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SESSION: Final = "gen-job"
TARGET: Final = session_of(ALICE, SESSION)
#: another session of alice's and the same name owned by others: never shown
OTHERS: Final = (session_of(ALICE, SESSION + "-2"), session_of(BOB, SESSION))
#: how the manager's /events/session (API v5+) names what the v4 stream calls these
V5_NAMES: Final = {
    "kernel_enqueued": "session_enqueued",
    "kernel_success": "session_success",
    "kernel_failure": "session_failure",
}
_ANSI: Final = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="session", params=GENERATIONS, ids=[g.release for g in GENERATIONS])
def sdk(request: pytest.FixtureRequest) -> Sdk:
    generation: Generation = request.param
    return build_sdk(generation)


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[str]:
    """A redis-server of the module's own, the cast stored once: never flushed under the
    shared gateway (the run's Redis is flushed per test)."""
    with RedisServer() as server:
        anyio.run(seed, server.url)
        yield server.url


@pytest.fixture(scope="module")
def shared_gateway(shared_redis: str) -> Iterator[RunningGateway]:
    with spawn_gateway(gateway_settings(shared_redis)) as running:  # defaults: api_version auto
        yield running


@pytest.fixture
def served(shared_gateway: RunningGateway) -> RunningGateway:
    """The module's gateway, once every stream of the test before has closed (its SDKs were
    stopped), so that counting streams counts this test's."""
    wait_until(lambda: streams(shared_gateway.base_url) == 0, 30, "the streams of the test before")
    return shared_gateway


def lifecycle(ref: SessionRef) -> list[KernelEvent]:
    return [
        ref.enqueued(),
        ref.preparing(),
        ref.started(),
        ref.success("task finished"),
        ref.terminating("user-requested"),
        ref.terminated("user-requested", result="SUCCESS"),
    ]


def publish(redis_url: str, events: list[KernelEvent]) -> None:
    """``events`` with the others' events between each two (a leak shows before the end)."""
    noise = [lifecycle(ref) for ref in OTHERS]
    mixed = [e for i, own in enumerate(events) for e in (*(n[i % 6] for n in noise), own)]
    with SyncPublisher.from_url(redis_url) as pub:
        assert len(pub.publish_many(mixed)) == len(mixed)


def shown(generation: Generation, event: KernelEvent) -> tuple[str, dict[str, Any]]:
    """The event as this generation's stream names it, and what its data must hold."""
    if generation.v4:
        data: dict[str, Any] = {
            "sessionId": event.session_id,
            "ownerAccessKey": event.owner_access_key,
            "reason": event.reason,
        }
        if event.name == "kernel_terminated":
            data["result"] = event.result
        return event.name, data
    data = {
        "sessionName": event.session_id,
        "ownerAccessKey": event.owner_access_key,
        "sessionId": str(TARGET.session_uuid),
        "reason": event.reason,
    }
    if event.name.startswith("kernel_") and event.name not in V5_NAMES:
        data["kernelId"] = str(TARGET.kernel_id)
    return V5_NAMES.get(event.name, event.name), data


def cli_events(child: Child) -> list[tuple[str, dict[str, Any]]]:
    """``backend.ai events`` output: ``name <data>`` per line, the data as JSON (26.x) or as
    a Python dict (``print(style(name), json.loads(data))``: 19.09-23.09), colour stripped."""
    parsed = []
    for line in child.out.lines:
        name, _, data = _ANSI.sub("", line).partition(" ")
        try:
            value = json.loads(data)
        except ValueError:
            value = ast.literal_eval(data)
        parsed.append((name, value))
    return parsed


def assert_events(
    generation: Generation,
    got: list[tuple[str, dict[str, Any]]],
    want: list[KernelEvent],
    context: str,
) -> None:
    expected = [shown(generation, e) for e in want]
    assert [name for name, _ in got] == [name for name, _ in expected], context
    for (_, data), (name, needed) in zip(got, expected, strict=True):
        assert {k: data.get(k) for k in needed} == needed, (name, data, context)


def no_version_warning(text: str) -> None:
    assert "APIVersionWarning" not in text and "API version" not in text, text
    assert "Traceback" not in text, text


def streams(base_url: str) -> int:
    try:
        return int(httpx.get(base_url + "/ready", timeout=5).json()["streams"])
    except httpx.TransportError:
        return 0


def until_streaming(urls: list[str], n: int, child: Child) -> None:
    def open_() -> bool:
        assert child.proc.poll() is None, f"the SDK exited early\n{child.describe()}"
        return sum(streams(url) for url in urls) >= n

    wait_until(open_, 30, f"{n} open stream(s)")


def test_cli_at_the_defaults(
    sdk: Sdk, served: RunningGateway, shared_redis: str, tmp_path: Path
) -> None:
    client = Client(sdk, tmp_path / "cwd", served.base_url)
    last = shown(sdk.generation, TARGET.terminated("x"))[0]
    with client.start(client.events_cli(SESSION), ALICE) as child:
        until_streaming([served.base_url], 1, child)
        publish(shared_redis, lifecycle(TARGET))
        child.out.wait_for(lambda ls: any(last in line for line in ls), 30, last)
    assert_events(sdk.generation, cli_events(child), lifecycle(TARGET), child.describe())
    no_version_warning(child.out.text + child.err.text)


def test_python_listener_at_the_defaults(
    sdk: Sdk, served: RunningGateway, shared_redis: str, tmp_path: Path
) -> None:
    client = Client(sdk, tmp_path / "cwd", served.base_url)
    ask = {"session": SESSION, "version": None, "until": {"*": "kernel_terminated"}, "timeout": 60}
    with client.start(client.listen_script(**ask), ALICE) as child:
        child.out.wait_for(
            lambda ls: any('"ready"' in line or '"error"' in line for line in ls),
            30,
            "the listener",
        )
        until_streaming([served.base_url], 1, child)
        publish(shared_redis, lifecycle(TARGET))
        assert child.wait_exit(60) == 0, child.describe()
    lines = [json.loads(line) for line in child.out.lines]
    (version,) = [line["api_version"] for line in lines if "api_version" in line]
    if sdk.generation.major_minor >= (20, 3):
        major, date = sdk.generation.speaks[1:].split(".")
        assert version == [int(major), date], child.describe()
    events = [(line["event"], line["data"]) for line in lines if "event" in line]
    assert_events(sdk.generation, events, lifecycle(TARGET), child.describe())
    assert all(line["id"] for line in lines if "event" in line)
    (warned,) = [line["warnings"] for line in lines if "warnings" in line]
    no_version_warning("\n".join(warned) + child.err.text)


def test_wait_returns(served: RunningGateway, shared_redis: str, tmp_path: Path) -> None:
    """The newest generation: ``backend.ai session events NAME --wait EVENT`` exits at that
    event (0; 1 for a failed batch session with ``batch_session_result``); at v4 it never
    did (it streamed the v4 names, where there is no ``session_success``). The three watch
    three sessions at once, each its own."""
    sdk = build_sdk(GENERATIONS[-1])
    client = Client(sdk, tmp_path / "cwd", served.base_url)
    cases = (
        ("session_success", session_of(ALICE, SESSION), 0),
        ("batch_session_result", session_of(ALICE, SESSION + "-b"), 0),
        ("batch_session_result", session_of(ALICE, SESSION + "-f"), 1),
    )
    with contextlib.ExitStack() as running:
        children = [
            running.enter_context(
                client.start([sdk.cli, "session", "events", ref.session_id, "--wait", wait], ALICE)
            )
            for wait, ref, _ in cases
        ]
        for child in children:
            until_streaming([served.base_url], len(cases), child)
        # each session's events in turn: the watchers of the others keep waiting
        for i, ((_, ref, code), child) in enumerate(zip(cases, children, strict=True)):
            end = ref.failure("task failed") if code else ref.success("task finished")
            publish(shared_redis, [ref.enqueued(), ref.started(), end])
            assert child.wait_exit(30) == code, child.describe()
            for other in children[i + 1 :]:
                assert other.proc.poll() is None, f"ended at {ref.session_id}'s events"
    for child in children:
        no_version_warning(child.out.text + child.err.text)


def test_wrong_secret(sdk: Sdk, served: RunningGateway, tmp_path: Path) -> None:
    client = Client(sdk, tmp_path / "cwd", served.base_url)
    wrong = "not-" + ALICE.secret_key
    with client.start(client.events_cli(SESSION), ALICE, secret=wrong) as cli:
        cli.wait_exit(60)
    said = cli.out.text + cli.err.text
    assert "401" in said and "Signature mismatch" in said, cli.describe()
    ask = {"session": SESSION, "version": None, "until": {"*": "kernel_terminated"}, "timeout": 60}
    with client.start(client.listen_script(**ask), ALICE, secret=wrong) as api:
        assert api.wait_exit(60) == 0, api.describe()
    (error,) = [json.loads(line)["error"] for line in api.out.lines if '"error"' in line]
    assert error["status"] == 401 and "Signature mismatch" in json.dumps(error), error
    assert streams(served.base_url) == 0


@needs_nginx
def test_sigterm_of_the_serving_replica_behind_nginx(sdk: Sdk, cast: str, tmp_path: Path) -> None:
    """Events published before the SIGTERM, between the SDK's connections (the serving
    replica has exited, the SDK has not come back yet: it waits 5 s) and after it came back
    on the other replica reach every SDK from 20.03 on, in order, once; 19.09's CLI and
    listener end with the stream (0), with every event they were sent: the ones before."""
    generation = sdk.generation
    whole = lifecycle(TARGET)
    before, between, after = whole[:2], whole[2:4], whole[4:]
    with (
        spawn_gateway(gateway_settings(cast)) as first,
        spawn_gateway(gateway_settings(cast)) as second,
    ):
        urls = [first.base_url, second.base_url]

        async def scenario() -> tuple[Child, Child]:
            first_address, second_address = (url.removeprefix("http://") for url in urls)
            # the second as nginx's backup: the SDK starts on the first, moves to the second
            async with run_nginx(tmp_path, [first_address], backups=[second_address]) as nginx:
                client = Client(sdk, tmp_path / "cwd", f"http://127.0.0.1:{nginx.port}")
                ask = {
                    "session": SESSION,
                    "version": None,
                    "until": {"*": "kernel_terminated"},
                    "timeout": 90,
                }
                with (
                    client.start(client.events_cli(SESSION), ALICE) as cli,
                    client.start(client.listen_script(**ask), ALICE) as api,
                ):
                    await anyio.to_thread.run_sync(until_streaming, urls, 2, cli)
                    publish(cast, before)
                    await anyio.to_thread.run_sync(
                        cli.out.wait_for, lambda ls: len(ls) >= len(before), 30, "the first events"
                    )
                    assert streams(first.base_url) == 2, "both on the first replica"
                    assert first.proc is not None
                    os.kill(first.proc.pid, signal.SIGTERM)
                    started = time.monotonic()
                    # drained and gone: both SDK streams have ended, and neither is back yet
                    await anyio.to_thread.run_sync(first.proc.wait, 20)
                    assert streams(second.base_url) == 0, "back before the first replica exited"
                    publish(cast, between)
                    assert streams(second.base_url) == 0, (
                        f"the SDK came back {time.monotonic() - started:.1f} s after the "
                        "SIGTERM, before the events between its connections were published"
                    )
                    if generation.reconnects:
                        # both SDK streams back (on the other replica), then the rest
                        await anyio.to_thread.run_sync(until_streaming, [second.base_url], 2, cli)
                        publish(cast, after)
                        last = shown(generation, after[-1])[0]
                        await anyio.to_thread.run_sync(
                            cli.out.wait_for, lambda ls: any(last in line for line in ls), 30, last
                        )
                        assert api.wait_exit(60) == 0, api.describe()
                    else:
                        # it ended with the stream, and so did its Python listener
                        assert cli.wait_exit(30) == 0, cli.describe()
                        assert api.wait_exit(30) == 0, api.describe()
                        assert time.monotonic() - started < 20
                return cli, api

        cli, api = anyio.run(scenario)
    if generation.reconnects:
        assert_events(generation, cli_events(cli), whole, cli.describe())
        lines = [json.loads(line) for line in api.out.lines]
        events = [(line["event"], line["data"]) for line in lines if "event" in line]
        assert_events(generation, events, whole, api.describe())
    else:
        assert_events(generation, cli_events(cli), before, cli.describe())
        # its Python listener (``Kernel.stream_events()``) too: it ends with the stream
        lines = [json.loads(line) for line in api.out.lines]
        events = [(line["event"], line["data"]) for line in lines if "event" in line]
        assert_events(generation, events, before, api.describe())
    no_version_warning(cli.out.text + cli.err.text)
