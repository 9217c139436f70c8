"""``gateway serve`` as an operator starts it, in a subprocess: every start-up that cannot
succeed ends within seconds, non-zero, with one line saying what to change; signals end it
while it waits; every worker logs in the configured format, and the start-up line shows the
(redacted) Redis URL."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from devtools.localredis import free_port
from tests.support.redis_server import RedisServer

#: no start-up failure may take longer than this (the Redis cases wait startup_timeout=1)
LIMIT = 10.0


def gateway(*args: str, env: dict[str, str] | None = None) -> list[str]:
    return [sys.executable, "-m", "gateway.cli", "serve", *args]


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any GATEWAY_* or KEV_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "KEV_"))}
    return {**env, **extra}


def run_failing(args: list[str], env: dict[str, str]) -> tuple[int, list[str], float]:
    start = time.monotonic()
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=LIMIT + 5)
    return proc.returncode, proc.stderr.splitlines(), time.monotonic() - start


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


CASES = {
    # name: (extra args, words the one line must hold)
    "port in use": (["--port", "{held}"], ["already in use", "--port"]),
    "port in use, 2 workers": (["--port", "{held}", "--workers", "2"], ["in use", "--port"]),
    "host not local": (["--host", "192.0.2.1", "--port", "{free}"], ["not an address", "--host"]),
    "host unresolvable": (["--host", "nowhere.invalid", "--port", "{free}"], ["--host"]),
    "redis down": (["--redis-url", "redis://127.0.0.1:{free}/0"], ["did not answer", "REDIS_URL"]),
    "redis down, 2 workers": (
        ["--redis-url", "redis://127.0.0.1:{free}/0", "--workers", "2"],
        ["did not answer", "REDIS_URL"],
    ),
    "bad setting": (["--workers", "0"], ["GATEWAY_WORKERS", "--workers", "1-256"]),
    "bad number": (["--ping-interval", "soon"], ["--ping-interval", "soon"]),
    "missing url file": (["--redis-url-file", "/nonexistent/url"], ["/nonexistent/url"]),
    "missing CA file": (
        ["--redis-url", "rediss://127.0.0.1:{free}/0", "--redis-tls-ca-file", "/nonexistent.pem"],
        ["/nonexistent.pem"],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_start_up_that_cannot_succeed_exits_at_once_with_one_line(
    case: str, held_port: int, redis_url: str
) -> None:
    extra, words = CASES[case]
    args = [a.format(held=held_port, free=free_port()) for a in extra]
    if "--port" not in args:
        args += ["--port", str(free_port())]
    env = clean_env(GATEWAY_REDIS_URL=redis_url, GATEWAY_STARTUP_TIMEOUT="1")
    code, lines, took = run_failing(gateway(*args), env)
    assert code != 0, lines
    assert took < LIMIT, (case, took)
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    verdicts = [line for line in lines if line.startswith(("gateway serve: ", "gateway: "))]
    assert len(verdicts) == 1, "\n".join(lines)
    assert lines[-1] == verdicts[0]
    for word in words:
        assert word in verdicts[0], (word, verdicts[0])


def test_sigterm_ends_a_replica_still_waiting_for_redis() -> None:
    env = clean_env(GATEWAY_STARTUP_TIMEOUT="60")
    args = gateway("--port", str(free_port()), "--redis-url", f"redis://127.0.0.1:{free_port()}/0")
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE)
        try:
            time.sleep(1.0)
            assert proc.poll() is None, "it should still be waiting for Redis"
            proc.send_signal(sig)
            assert proc.wait(timeout=3) != 0
        finally:
            proc.kill()
            proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the gateway exited"
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready within {timeout}s")


def test_every_worker_is_a_replica_of_its_own_when_the_replica_is_named(
    redis_url: str,
) -> None:
    """GATEWAY_REPLICA names the whole process (say, the pod); each of its workers is
    ``<name>-<pid>``, with a probe channel (and stream counts) of its own. They used to share
    the one name, each taking the other's probes for its own."""
    port = free_port()
    env = clean_env(KEV_REDIS_URL=redis_url, GATEWAY_REPLICA="pod-7")
    proc = subprocess.Popen(gateway("--port", str(port), "--workers", "2"), env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc)
        with redis.Redis.from_url(redis_url) as client:
            deadline = time.monotonic() + 10
            while len(channels := client.pubsub_channels("kev:probe:*")) < 2:
                assert time.monotonic() < deadline, channels
                time.sleep(0.1)
        names = {c.decode().removeprefix("kev:probe:") for c in channels}
        assert len(names) == 2 and all(re.fullmatch(r"pod-7-\d+", n) for n in names), names
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_every_worker_logs_json_at_info_and_the_start_up_line_redacts_the_password(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    with redis.Redis.from_url(private_redis.url) as client:
        client.config_set("requirepass", "s3cret-pw")
    try:
        port = free_port()
        url = private_redis.url.replace("redis://", "redis://:s3cret-pw@")
        log = tmp_path / "stderr.log"
        env = clean_env(KEV_REDIS_URL=url)  # the shared variable alone is enough
        with log.open("wb") as out:
            proc = subprocess.Popen(
                gateway("--port", str(port), "--workers", "2", "--log-format", "json"),
                env=env,
                stderr=out,
            )
            try:
                wait_ready(f"http://127.0.0.1:{port}", proc)
                deadline = time.monotonic() + 10
                while log.read_text().count("subscribed to") < 2 and time.monotonic() < deadline:
                    time.sleep(0.1)
            finally:
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(timeout=20)
        assert code == 0
        text = log.read_text()
        assert "s3cret-pw" not in text
        entries = [json.loads(line) for line in text.splitlines()]  # every line is JSON
        assert {"ts", "level", "logger", "msg"} <= set(entries[0])
        up = [e["msg"] for e in entries if " up, redis " in e["msg"]]
        assert len(up) == 2, up  # one per worker, at info
        assert all(e["level"] == "info" for e in entries if e["msg"] in up)
        assert all(":***@127.0.0.1" in msg for msg in up), up
        assert len({msg.split()[2] for msg in up}) == 2  # each worker names itself
    finally:
        with redis.Redis.from_url(private_redis.url, password="s3cret-pw") as client:
            client.config_set("requirepass", "")
