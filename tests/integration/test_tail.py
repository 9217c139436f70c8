"""``gateway tail`` as a process against a live gateway: JSON and readable lines, the
Backend.AI environment variables, refusals."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from gateway.cli.tail import DEFAULT_URL
from publisher import SyncPublisher
from tests.support.gateway_server import RunningGateway
from tests.support.identities import ALICE, BOB, session_of
from tests.support.wait import wait_until


def _tail(url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "tail", "--url", url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_tail_prints_json_lines_and_readable_lines(gateway: RunningGateway, redis_url: str) -> None:
    keys = ["--access-key", ALICE.access_key, "--secret-key", ALICE.secret_key]
    as_json = _tail(gateway.base_url, *keys, "--json", "--count", "2")
    readable = _tail(gateway.base_url, *keys, "--session-id", "tail-me", "--count", "1")
    wait_until(lambda: len(gateway.state.hub) >= 2, 10, "both tails to connect")
    with SyncPublisher.from_url(redis_url) as pub:
        pub.publish(session_of(BOB, "not-alice").started())  # alice may not see it
        ids = pub.publish_many(
            [session_of(ALICE, "tail-me").started("up"),
             session_of(ALICE, "tail-me").terminated("done", result="SUCCESS")]
        )  # fmt: skip
    out, _ = as_json.communicate(timeout=10)
    line, _ = readable.communicate(timeout=10)
    lines = [json.loads(x) for x in out.splitlines()]
    assert [x["id"] for x in lines] == ids
    assert lines[1] == {
        "id": ids[1], "event": "kernel_terminated", "sessionId": "tail-me",
        "ownerAccessKey": ALICE.access_key, "reason": "done", "result": "SUCCESS",
    }  # fmt: skip
    assert "kernel_started" in line and "tail-me" in line and "reason='up'" in line
    assert as_json.returncode == readable.returncode == 0


def test_tail_reads_backend_ai_environment_and_reports_refusals(gateway: RunningGateway) -> None:
    env = {"BACKEND_ENDPOINT": gateway.base_url, "BACKEND_ACCESS_KEY": ALICE.access_key,
           "BACKEND_SECRET_KEY": "wrong-secret-wrong-secret"}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "tail", "--count", "1"],
        capture_output=True, text=True, timeout=20, env={**env, "PATH": ""},
    )  # fmt: skip
    assert proc.returncode == 1
    assert "HTTP 401" in proc.stderr and "Traceback" not in proc.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "tail"], capture_output=True, text=True,
        timeout=20, env={"PATH": ""},
    )  # fmt: skip
    assert missing.returncode == 2 and "--access-key" in missing.stderr


def test_tail_reports_connection_failures_while_it_retries() -> None:
    """Nothing listens: tail keeps trying (with backoff) and says so on stderr each time,
    instead of printing nothing."""
    with socket.socket() as probe:  # a port nothing listens on (bound, never listening)
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
        proc = _tail(url, "--access-key", ALICE.access_key, "--secret-key", ALICE.secret_key)
        try:
            assert proc.stderr is not None
            first = proc.stderr.readline()
            second = proc.stderr.readline()  # after the first backoff (1-1.5 s)
            assert proc.poll() is None, "tail gave up"
        finally:
            proc.terminate()
            proc.communicate(timeout=10)
    for line in (first, second):
        assert line.startswith("gateway tail: cannot connect to " + url), line
        assert "Connection refused" in line and "retrying" in line, line


def test_tail_defaults_to_the_front_door() -> None:
    """One default everywhere: the demo's and compose's nginx on 8080."""
    assert DEFAULT_URL == "http://127.0.0.1:8080"
    helped = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "tail", "--help"],
        capture_output=True, text=True, timeout=20, check=True,
    )  # fmt: skip
    assert "default http://127.0.0.1:8080" in " ".join(helped.stdout.split())
