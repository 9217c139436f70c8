"""The official Backend.AI client SDK 23.9.10 (PyPI ``backend.ai-client``), unmodified, in
depth, against real gateway processes (``gateway serve``) set to report API v4 only
(``api_version=v4.20190615``, the setting an operator keeps for v4 clients), and the real
publisher library. The SDK's venv and the ways of running it: ``tests/support/sdk.py``; every
generation at the gateway's defaults: ``tests/system/test_sdk_generations.py``.

* ``backend.ai events NAME`` and ``ComputeSession(NAME).listen_events()`` negotiate the API
  version by themselves (``GET /``: the gateway answers v4 here), so they stream
  ``/stream/kernel/_/events?sessionId=NAME[&owner_access_key=AK]``: a whole lifecycle of the
  session, with other sessions' events published in between, must come out in order, nothing
  else, each with the v4 data (``sessionId``, ``ownerAccessKey``, ``reason``; ``result`` on
  ``kernel_terminated``), and the SDK warns that v4 is below its minimum (v5).
* Forced to API v6 (``proxy_mode``: no negotiation) the SDK asks
  ``/events/session?sessionName=NAME&scope=...`` and expects the manager's v5+ names
  (``session_enqueued``, ``session_success``: there is no ``kernel_enqueued`` there) and data
  (``sessionName``, ``ownerAccessKey``, ``sessionId`` = the session's UUID, ``exitCode``,
  ``kernelId`` on kernel events). SDK 23.9.10 waits for a batch session's result only in
  ``backend.ai watch``, which first lists sessions through ``POST /admin/gql`` (GraphQL, not
  served here): that command is not run; the ``session_success`` it waits for is checked
  through the Python API instead, with every ``scope``. A gateway configured to report v6
  (``api_version``) gets the CLI there by negotiation alone.
* A wrong secret is refused (401, "Signature mismatch"), and a keypair deactivated while the CLI
  streams ends its stream with ``server_close`` (``revoked``), which the SDK obeys: it stops.

The SDK's CLI exits 0 even on errors (it prints them on stderr), and does not stop by itself on
``kernel_terminated``: the tests read its output until what they expect, then stop it by PID.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from gateway.cli import main as gateway_cli
from publisher import KernelEvent, SessionRef, SyncPublisher
from tests.support.gateway_server import RunningGateway, gateway_settings, spawn_gateway
from tests.support.identities import ALICE, BOB, ROOT, Person, session_of
from tests.support.sdk import GENERATIONS, Child, Client, Sdk, build_sdk
from tests.support.wait import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

V4: Final = "v4.20190615"  # what the gateway reports here (api_version)
V6: Final = "v6.20220615"
SESSION: Final = "sdk-job"
#: how the manager's /events/session (API v5+) names what the v4 stream calls these
_V5_NAMES: Final = {
    "kernel_enqueued": "session_enqueued",
    "kernel_success": "session_success",
    "kernel_failure": "session_failure",
}


@pytest.fixture(scope="session")
def sdk() -> Sdk:
    """23.9.10 (Python 3.11), cached at ``.venv-sdk/23.9.10/`` (tests/support/sdk.py)."""
    return build_sdk(next(g for g in GENERATIONS if g.release == "23.9.10"))


# -- the gateway, the events ----------------------------------------------------------------------


@pytest.fixture
def served(cast: str) -> Iterator[RunningGateway]:
    """``gateway serve`` as its own process on the test's Redis, the cast stored, reporting
    v4 to every client (the setting for an operator who wants v4 only); open streams re-check
    their keypair every 0.5 s (the README's floor: at least every second)."""
    settings = gateway_settings(cast, identity_cache_ttl=0.5, api_version=V4)
    with spawn_gateway(settings) as running:
        yield running


@pytest.fixture
def client(sdk: Sdk, served: RunningGateway, tmp_path: Path) -> Client:
    return Client(sdk, tmp_path / "sdk-cwd", served.base_url)


def lifecycle(ref: SessionRef) -> list[KernelEvent]:
    """A batch session's whole life, its result included."""
    return [
        ref.enqueued(),
        ref.preparing(),
        ref.pulling("image not cached"),
        ref.creating(),
        ref.started(),
        ref.success("task finished"),
        ref.terminating("user-requested"),
        ref.terminated("user-requested", result="SUCCESS"),
    ]


#: the target of every test: alice's session
TARGET: Final = session_of(ALICE, SESSION)
#: what must not show: another session of alice's, the same name owned by others
OTHERS: Final = (
    session_of(ALICE, SESSION + "-2"),
    session_of(BOB, SESSION),
    session_of(ROOT, SESSION),
)


def publish_lifecycles(redis_url: str) -> list[KernelEvent]:
    """Publish the target's lifecycle with the others' events between each two of its own
    (so a leak shows before the target's last event); returns the target's events."""
    target = lifecycle(TARGET)
    others = [lifecycle(ref) for ref in OTHERS]
    interleaved = [e for i, own in enumerate(target) for e in (*(o[i] for o in others), own)]
    with SyncPublisher.from_url(redis_url) as pub:
        ids = pub.publish_many(interleaved)
    assert len(ids) == len(interleaved), "the publisher buffered: is redis-server there?"
    return target


def v4_data(event: KernelEvent) -> dict[str, str]:
    """The event's data on the v4 stream, as the README (and manager 19.09) define it."""
    data = {
        "sessionId": event.session_id,
        "ownerAccessKey": event.owner_access_key,
        "reason": event.reason,
    }
    if event.name == "kernel_terminated":
        assert event.result is not None
        data["result"] = event.result
    return data


def streams(base_url: str) -> int:
    return int(httpx.get(base_url + "/ready", timeout=5).json()["streams"])


def until_streaming(base_url: str, n: int, child: Child) -> None:
    """Wait until the gateway holds ``n`` streams (the SDK asked before anything is
    published: it does not resume, so what comes before its stream it never sees)."""

    def open_() -> bool:
        assert child.proc.poll() is None, f"the SDK exited early\n{child.describe()}"
        return streams(base_url) >= n

    wait_until(open_, 20, f"{n} open stream(s)")


def cli_events(lines: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """``backend.ai events`` output: one ``event-name {single-line json}`` per event."""
    parsed: list[tuple[str, dict[str, Any]]] = []
    for line in lines:
        name, _, data = line.partition(" ")
        parsed.append((name, json.loads(data)))
    return parsed


def script_lines(child: Child) -> list[dict[str, Any]]:
    return [json.loads(line) for line in child.out.lines]


def has(key: str) -> Callable[[list[str]], bool]:
    """Whether a script printed an object with ``key``, or an error."""

    def check(lines: list[str]) -> bool:
        return any(key in obj or "error" in obj for obj in map(json.loads, lines))

    return check


def only(lines: list[dict[str, Any]], key: str) -> Any:
    (value,) = [line[key] for line in lines if key in line]
    return value


# -- the tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caller", "owner"),
    [(ALICE, None), (ROOT, ALICE.access_key)],
    ids=["own-session", "superadmin-names-owner"],
)
def test_cli_events_prints_the_whole_lifecycle_of_one_session(
    client: Client, redis_url: str, caller: Person, owner: str | None
) -> None:
    """``backend.ai events sdk-job`` (``--owner AK``: ``owner_access_key=AK``), negotiating
    v4 by itself: every event of that session, in order, nothing of the others."""
    with client.start(client.events_cli(SESSION, owner=owner), caller) as child:
        until_streaming(client.base_url, 1, child)
        published = publish_lifecycles(redis_url)
        child.out.wait_for(
            lambda lines: any(line.startswith("kernel_terminated ") for line in lines),
            20,
            "kernel_terminated",
        )
        assert child.proc.poll() is None, "the CLI stops only on server_close"
    got = cli_events(child.out.lines)
    assert [name for name, _ in got] == [e.name for e in published], child.describe()
    assert [data for _, data in got] == [v4_data(e) for e in published]
    # stderr: the SDK's own warning about a server below its minimum API version (v5), no error
    assert "APIVersionWarning: The server is too old" in child.err.text, child.err.text
    assert "\u2718" not in child.err.text and "Traceback" not in child.err.text, child.err.text


def test_python_api_listens_to_one_session(client: Client, redis_url: str) -> None:
    """``AsyncSession()`` (negotiating: v4) ``.ComputeSession(name).listen_events()``."""
    ask = {"session": SESSION, "version": None, "until": {"*": "kernel_terminated"}, "timeout": 30}
    with client.start(client.listen_script(**ask), ALICE) as child:
        child.out.wait_for(has("ready"), 20, "the listener")
        until_streaming(client.base_url, 1, child)
        published = publish_lifecycles(redis_url)
        assert child.wait_exit(30) == 0, child.describe()
    lines = script_lines(child)
    assert only(lines, "api_version") == [4, V4.split(".")[1]], child.describe()
    events = [line for line in lines if "event" in line]
    assert [e["event"] for e in events] == [e.name for e in published], child.describe()
    assert [e["data"] for e in events] == [v4_data(e) for e in published]
    assert all(e["id"] for e in events), "every event carries its id"
    assert only(lines, "warnings") == [
        "APIVersionWarning: The server is too old and does not meet the minimum API version "
        "requirement: v5.20191215\nPlease upgrade the server or downgrade/reinstall the client "
        "SDK with the same major.minor release of the server."
    ]


def test_python_api_at_v6_listens_on_events_session(client: Client, redis_url: str) -> None:
    """``AsyncSession`` forced to API v6 (``proxy_mode``: no ``GET /``) asks
    ``/events/session?sessionName=sdk-job&scope=...``: one listener per scope, at once; the
    manager's v5+ names and data; ``scope=session`` ends on the batch result
    (``session_success``, what ``backend.ai watch`` waits for)."""
    until = {"*": "kernel_terminated", "session": "session_success", "kernel": "kernel_terminated"}
    ask = {"session": SESSION, "version": V6, "until": until, "timeout": 30}
    with client.start(client.listen_script(**ask), ALICE) as child:
        child.out.wait_for(has("ready"), 20, "the listeners")
        assert "error" not in child.out.text, child.describe()
        until_streaming(client.base_url, 3, child)
        published = publish_lifecycles(redis_url)
        assert child.wait_exit(30) == 0, child.describe()
    lines = script_lines(child)
    assert only(lines, "api_version") == [6, V6.split(".")[1]]
    assert only(lines, "warnings") == []
    expected = [(_V5_NAMES.get(e.name, e.name), e) for e in published]
    for scope, prefix in (("*", ""), ("session", "session_"), ("kernel", "kernel_")):
        got = [line for line in lines if line.get("scope") == scope]
        want = [(name, e) for name, e in expected if name.startswith(prefix)]
        assert [g["event"] for g in got] == [name for name, _ in want], (scope, child.describe())
        for g, (name, event) in zip(got, want, strict=True):
            data = g["data"]
            assert g["id"], g
            assert data["sessionName"] == SESSION, g
            assert data["ownerAccessKey"] == ALICE.access_key, g
            assert data["sessionId"] == str(TARGET.session_uuid), g
            assert data["reason"] == event.reason, g
            assert "exitCode" in data, g
            if name.startswith("kernel_"):
                assert data["kernelId"] == str(TARGET.kernel_id), g


def test_cli_negotiates_v6_when_the_gateway_reports_it(sdk: Sdk, cast: str, tmp_path: Path) -> None:
    """With ``api_version=v6.20220615`` the same ``backend.ai events`` negotiates v6 by itself
    (no ``APIVersionWarning`` then) and streams ``/events/session``: the v5+ names."""
    settings = gateway_settings(cast, identity_cache_ttl=0.5, api_version=V6)
    with spawn_gateway(settings) as served:
        client = Client(sdk, tmp_path, served.base_url)
        with client.start(client.events_cli(SESSION), ALICE) as child:
            until_streaming(client.base_url, 1, child)
            published = publish_lifecycles(cast)
            child.out.wait_for(
                lambda lines: any(line.startswith("kernel_terminated ") for line in lines),
                20,
                "kernel_terminated",
            )
    got = cli_events(child.out.lines)
    assert [name for name, _ in got] == [_V5_NAMES.get(e.name, e.name) for e in published]
    for (_, data), event in zip(got, published, strict=True):
        assert data["sessionName"] == SESSION and data["sessionId"] == str(TARGET.session_uuid)
        assert (data["ownerAccessKey"], data["reason"]) == (ALICE.access_key, event.reason)
    assert child.err.text == "", child.err.text


def test_wrong_secret_is_refused(client: Client) -> None:
    """401 "Signature mismatch": the CLI prints it (and exits 0, as it does on every error),
    the Python API raises ``BackendAPIError`` with the problem document."""
    wrong = "not-" + ALICE.secret_key
    with client.start(client.events_cli(SESSION), ALICE, secret=wrong) as cli:
        assert cli.wait_exit(30) == 0, cli.describe()
    assert cli.out.lines == [], cli.describe()
    assert "BackendAPIError: 401 Unauthorized" in cli.err.text, cli.describe()
    assert "Signature mismatch" in cli.err.text, cli.describe()

    ask = {"session": SESSION, "version": None, "until": {"*": "kernel_terminated"}, "timeout": 30}
    with client.start(client.listen_script(**ask), ALICE, secret=wrong) as api:
        assert api.wait_exit(30) == 0, api.describe()
    error = only(script_lines(api), "error")
    assert (error["status"], error["reason"]) == (401, "Unauthorized"), error
    assert error["data"] == {
        "type": "https://api.backend.ai/probs/auth-failed",
        "title": "Signature mismatch",
    }
    assert streams(client.base_url) == 0


def test_revoked_keypair_ends_the_cli_stream(client: Client, redis_url: str) -> None:
    """``gateway keypair deactivate`` while ``backend.ai events`` streams: the gateway sends
    ``server_close`` (``revoked``) within about a second, the SDK prints it and stops (it
    reconnects after an ordinary disconnect, not after ``server_close``); the next try is
    refused."""
    first = TARGET.enqueued()
    with client.start(client.events_cli(SESSION), ALICE) as child:
        until_streaming(client.base_url, 1, child)
        with SyncPublisher.from_url(redis_url) as pub:
            assert pub.publish(first) is not None
        child.out.wait_for(lambda lines: len(lines) >= 1, 20, "the first event")
        started = time.monotonic()
        code = gateway_cli(["keypair", "deactivate", ALICE.access_key, "--redis-url", redis_url])
        assert code == 0
        assert child.wait_exit(15) == 0, child.describe()
        took = time.monotonic() - started
    got = cli_events(child.out.lines)
    assert got[0] == (first.name, v4_data(first)), child.describe()
    (name, data), *rest = got[1:]
    assert rest == [] and name == "server_close" and data["reason"] == "revoked", got
    assert took < 5, f"the stream ended {took:.1f} s after the keypair was deactivated"
    assert streams(client.base_url) == 0

    with client.start(client.events_cli(SESSION), ALICE) as again:
        assert again.wait_exit(30) == 0, again.describe()
    assert again.out.lines == [], again.describe()
    assert "BackendAPIError: 401 Unauthorized" in again.err.text, again.describe()


def test_the_sdk_is_not_importable_here() -> None:
    """The SDK stays in its venv: neither this interpreter nor the project can import it."""
    with pytest.raises(ModuleNotFoundError):
        __import__("ai.backend.client")
