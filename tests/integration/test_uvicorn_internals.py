"""The version guard of ``gateway.http.uvicorn_internals``, the one module that uses uvicorn
beyond its public API: the installed uvicorn is the tested one, pyproject.toml bounds it the
same way, and what the module reads of uvicorn's request cycle and httptools protocol is
there, checked on a real uvicorn serving real requests. Each failure says what differs and
what to do."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from packaging.requirements import Requirement
from packaging.version import Version

from gateway.http import uvicorn_internals
from gateway.http.uvicorn_internals import (
    TESTED,
    LeanEvent,
    LimitedHttpToolsProtocol,
    UvicornStream,
    check_uvicorn,
    direct_path,
    holds_lean_events,
)
from tests.support.fakes import RecordingSend
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
HOW = (
    "gateway/http/uvicorn_internals.py uses uvicorn internals tested with uvicorn {tested}; "
    "re-run the suite and the fan-out bench on the new version, then widen TESTED there and "
    "the bound in pyproject.toml together"
)


def _tested() -> str:
    low, high = (".".join(map(str, v)) for v in TESTED)
    return f">={low},<{high}"


def test_the_installed_uvicorn_is_in_the_tested_range() -> None:
    version = Version(uvicorn.__version__)
    assert version in Requirement(f"uvicorn{_tested()}").specifier, (
        f"uvicorn {version} is installed: " + HOW.format(tested=_tested())
    )
    errors, warnings = check_uvicorn()
    assert errors == [] and warnings == []


def test_pyproject_bounds_uvicorn_to_the_tested_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (uvicorn_req,) = (
        Requirement(r) for r in project["dependencies"] if Requirement(r).name == "uvicorn"
    )
    assert uvicorn_req.specifier == Requirement(f"uvicorn{_tested()}").specifier, (
        f"pyproject.toml asks for {uvicorn_req}; TESTED in gateway/http/uvicorn_internals.py "
        f"says {_tested()}: keep them equal"
    )


@pytest.mark.parametrize("version", ["0.33.9", "0.56.0", "1.0.0"])
def test_a_version_outside_the_range_is_a_warning_naming_it(
    monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    monkeypatch.setattr(uvicorn, "__version__", version)
    errors, warnings = check_uvicorn()
    assert errors == [] and len(warnings) == 1
    assert version in warnings[0] and _tested() in warnings[0]


def test_a_protocol_without_a_hook_cannot_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(uvicorn_internals.HttpToolsProtocol, "on_response_complete")
    errors, _ = check_uvicorn()
    assert len(errors) == 1 and "on_response_complete" in errors[0]


def test_only_uvicorns_httptools_cycle_is_a_direct_path() -> None:
    assert direct_path(RecordingSend()) is None

    class RequestResponseCycle:  # the name alone is not enough: h11 has one too
        transport = flow = chunked_encoding = disconnected = object()

        async def send(self, message: object) -> None: ...

    assert direct_path(RequestResponseCycle().send) is None


# -- on a real uvicorn --------------------------------------------------------------------------


class _Recorder:
    """An ASGI app: streams two chunks, recording the direct path it was offered and whether
    the response was chunked once the headers went out."""

    def __init__(self) -> None:
        self.seen: list[tuple[UvicornStream | None, bool, bool]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        direct = direct_path(send)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        self.seen.append(
            (direct, direct is not None and direct.chunked(), direct is None or direct.blocked)
        )
        assert direct is not None
        direct.write_chunk(b"5\r\nhello\r\n")  # what the hub does: one framed chunk
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@contextlib.contextmanager
def _serving(app: Any, http: Any = LimitedHttpToolsProtocol, **options: Any) -> Iterator[str]:
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http=http,
        loop="uvloop",
        lifespan="off",
        log_config=None,
        access_log=False,
        **options,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_cycle_offers_the_direct_path_and_a_direct_chunk_reaches_the_client() -> None:
    app = _Recorder()
    with _serving(app) as url:
        response = httpx.get(url + "/", timeout=5)
    assert response.status_code == 200 and response.content == b"hello", (
        f"uvicorn {uvicorn.__version__}: a chunk written to the transport did not arrive as "
        "the body: " + HOW.format(tested=_tested())
    )
    ((direct, chunked, blocked),) = app.seen
    assert direct is not None, (
        f"uvicorn {uvicorn.__version__}'s request cycle lacks what the direct path reads: "
        + HOW.format(tested=_tested())
    )
    assert chunked
    assert not blocked


class _Flooder:
    """An ASGI app: one response written directly until its transport pauses, recording the
    stream's ``blocked`` flag at each step of the client's doing (``steps``: the test's)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []
        self.steps: dict[str, threading.Event] = {
            name: threading.Event() for name in ("drained", "gone")
        }

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        direct = direct_path(send)
        assert direct is not None
        await send({"type": "http.response.start", "status": 200, "headers": []})
        self.seen.append(("headers out", direct.blocked))
        for _ in range(1_000):  # the client does not read: its buffers fill, then ours
            if direct.blocked:
                break
            direct.write_chunk(b"%x\r\n%b\r\n" % (65536, b"x" * 65536))
        self.seen.append(("flooded", direct.blocked))
        for step in ("drained", "gone"):
            for _ in range(1000):  # the test's step, then the flag's change: 10 s at most
                if self.steps[step].is_set() and direct.blocked == (step == "gone"):
                    break
                await asyncio.sleep(0.01)
            self.seen.append((step, direct.blocked))


def test_the_streams_blocked_flag_follows_flow_control_and_the_clients_going() -> None:
    """What the hub's flush reads for every stream instead of uvicorn's flow control and
    cycle: on a real uvicorn, set when the transport pauses, cleared when it drains, set for
    good when the client goes."""
    app = _Flooder()
    with _serving(app) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            deadline = time.monotonic() + 10
            while len(app.seen) < 2:
                assert time.monotonic() < deadline, app.seen
                time.sleep(0.01)
            app.steps["drained"].set()
            sock.settimeout(0.05)  # the last bytes may be read before the server looks
            deadline = time.monotonic() + 10
            while len(app.seen) < 3:  # read until the server has seen the transport drain
                assert time.monotonic() < deadline, app.seen
                with contextlib.suppress(TimeoutError):
                    sock.recv(1 << 20)
        app.steps["gone"].set()
        deadline = time.monotonic() + 10
        while len(app.seen) < 4:
            assert time.monotonic() < deadline, app.seen
            time.sleep(0.01)
    assert app.seen == [
        ("headers out", False),
        ("flooded", True),
        ("drained", False),
        ("gone", True),
    ], f"{app.seen}: " + HOW.format(tested=_tested())


def test_uvicorns_own_protocol_offers_no_direct_path() -> None:
    """Nothing would keep ``blocked`` there: the stream writes through ASGI ``send``."""
    offered: list[UvicornStream | None] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            offered.append(direct_path(send))
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    with _serving(app, http=uvicorn_internals.HttpToolsProtocol) as url:
        assert httpx.get(url + "/", timeout=5).status_code == 204
    with _serving(app) as url:  # and the limited one does
        assert httpx.get(url + "/", timeout=5).status_code == 204
    assert offered[0] is None and isinstance(offered[1], UvicornStream)


def test_the_limited_protocol_answers_a_head_too_large_and_a_slow_head() -> None:
    with _serving(_Recorder(), h11_max_incomplete_event_size=1024, timeout_keep_alive=1) as url:
        response = httpx.get(url + "/", headers={"x-big": "x" * 4096}, timeout=5)
        assert response.status_code == 431, HOW.format(tested=_tested())
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408 "), HOW.format(tested=_tested())


class _Echo:
    """An ASGI app: answers each request with its body, after recording which events uvicorn's
    cycle and flow control were given."""

    def __init__(self) -> None:
        self.lean: list[bool] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.lean.append(holds_lean_events(send))
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def test_the_limited_protocol_holds_lean_events_and_still_serves_pipelined_requests() -> None:
    """What each connection holds less of (uvicorn's events and its queue of pipelined
    requests, replaced): requests with bodies, and three pipelined in one write, are all
    answered in order. A uvicorn that moved those fields leaves its own in place: this
    test says so, and nothing breaks."""
    app = _Echo()
    with _serving(app) as url:
        host, port = url.removeprefix("http://").split(":")
        requests = [
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\none",
            b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nthree",
        ]
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"".join(requests))
            answer = b""
            while answer.count(b"HTTP/1.1 200 ") < 3 or not answer.endswith(b"three"):
                chunk = sock.recv(65536)
                assert chunk, f"closed after {answer!r}"
                answer += chunk
        bodies = [part.rpartition(b"\r\n\r\n")[2] for part in answer.split(b"HTTP/1.1 ")[1:]]
        assert bodies == [b"one", b"", b"three"]
    assert app.lean == [True] * 3, (
        f"uvicorn {uvicorn.__version__}: its cycle's message event or flow control's "
        "writable event is no longer where the limited protocol replaces it: "
        + HOW.format(tested=_tested())
    )


def test_a_lean_event_means_what_an_asyncio_event_means() -> None:
    async def go() -> None:
        event = LeanEvent()
        assert not event.is_set()
        first, second = (asyncio.ensure_future(_waited(event)) for _ in range(2))
        cancelled = asyncio.ensure_future(_waited(event))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.sleep(0)
        assert not first.done() and not second.done()
        event.set()
        assert await first and await second and cancelled.cancelled()
        assert event.is_set() and await event.wait()  # set: at once
        event.clear()
        assert not event.is_set()
        late = asyncio.ensure_future(_waited(event))
        await asyncio.sleep(0)
        assert not late.done()
        event.set()
        assert await late
        assert LeanEvent(True).is_set()

    asyncio.run(go())


async def _waited(event: LeanEvent) -> bool:
    return await event.wait()


def test_an_internal_missing_from_the_installed_uvicorn_is_a_start_up_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvicorn 0.34 had no ``uvicorn.config.STARTUP_FAILURE``: importing it failed with a
    traceback before the check could say so. Now the import is guarded and the check
    names it (``gateway serve`` exits with that one line)."""
    monkeypatch.setattr(uvicorn_internals, "_MISSING", ["uvicorn.config.STARTUP_FAILURE (gone)"])
    errors, _ = check_uvicorn()
    assert len(errors) == 1 and "STARTUP_FAILURE" in errors[0] and _tested() in errors[0]
