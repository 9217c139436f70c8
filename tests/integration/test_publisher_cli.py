"""``kev-publish``: ``emit`` puts exactly the event given in history and on the channel,
refuses bad values in one line; ``demo`` publishes, paces, and stops cleanly on a signal."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis

from publisher import Keys, decode_event
from publisher.cli import main
from tests.support.redis_server import RedisServer, free_port
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]

EMIT = [
    "emit",
    "--name",
    "kernel_terminated",
    "--session-id",
    "mysession-01",
    "--owner-access-key",
    "AKIANABBDUSEREXAMPLE",
    "--owner-user-id",
    "user@lablup.com",
    "--domain",
    "research",
    "--group",
    "ml-team",
    "--reason",
    "user-requested",
    "--result",
    "SUCCESS",
]


def with_option(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with ``flag`` set to ``value`` (replaced if present)."""
    if flag in argv:
        i = argv.index(flag)
        return [*argv[: i + 1], value, *argv[i + 2 :]]
    return [*argv, flag, value]


def without_option(argv: list[str], flag: str) -> list[str]:
    i = argv.index(flag)
    return [*argv[:i], *argv[i + 2 :]]


def test_emit_puts_exactly_that_event_in_history_and_on_the_channel(
    redis_url: str, sync_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = Keys("cli")
    session_uuid, kernel_id = uuid.uuid4(), uuid.uuid4()
    pubsub = sync_redis.pubsub()
    try:
        pubsub.subscribe(keys.channel)
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
        argv = [
            *EMIT,
            "--session-uuid",
            str(session_uuid),
            "--kernel-id",
            str(kernel_id),
            "--redis-url",
            redis_url,
            "--prefix",
            "cli",
        ]
        assert main(argv, environ={}) == 0
        stream_id = capsys.readouterr().out.strip()
        assert re.fullmatch(r"\d+-\d+", stream_id)

        ((entry_id, fields),) = sync_redis.xrange(keys.history)
        assert entry_id.decode() == stream_id
        payload = fields[b"e"]
        event = decode_event(payload)
        assert event.name == "kernel_terminated"
        assert event.session_id == "mysession-01"
        assert (event.session_uuid, event.kernel_id) == (session_uuid, kernel_id)
        assert event.owner_access_key == "AKIANABBDUSEREXAMPLE"
        assert event.owner_user_id == "user@lablup.com"
        assert (event.domain, event.group) == ("research", "ml-team")
        assert (event.reason, event.result) == ("user-requested", "SUCCESS")
        assert abs(event.timestamp - time.time()) < 60

        message = None
        deadline = time.monotonic() + 5
        while message is None and time.monotonic() < deadline:
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        assert message is not None
        assert message["data"] == stream_id.encode() + b" " + payload
        assert pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05) is None
    finally:
        pubsub.close()


def test_emit_reads_redis_url_and_prefix_from_the_environment(
    redis_url: str, sync_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = with_option(EMIT, "--name", "kernel_started")
    argv = without_option(argv, "--result")
    assert main(argv, environ={"KEV_REDIS_URL": redis_url, "KEV_PREFIX": "envp"}) == 0
    stream_id = capsys.readouterr().out.strip()
    ((entry_id, fields),) = sync_redis.xrange(Keys("envp").history)
    assert entry_id.decode() == stream_id
    event = decode_event(fields[b"e"])
    assert (event.name, event.result) == ("kernel_started", None)


def test_emit_terminated_without_result_is_undefined(
    redis_url: str, sync_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = without_option(EMIT, "--result")
    assert main([*argv, "--redis-url", redis_url], environ={}) == 0
    ((_, fields),) = sync_redis.xrange(Keys().history)
    assert decode_event(fields[b"e"]).result == "UNDEFINED"


@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [
        ("--name", "kernel_exploded", "--name"),
        ("--session-id", "not a slug", "--session-id"),
        ("--session-id", "x" * 65, "--session-id"),
        ("--owner-access-key", "", "--owner-access-key"),
        ("--owner-user-id", "", "--owner-user-id"),
        ("--domain", "", "--domain"),
        ("--group", "", "--group"),
        ("--result", "MAYBE", "--result"),
        ("--reason", "r" * 2000, "--reason"),
        ("--session-uuid", "not-a-uuid", "--session-uuid"),
        ("--kernel-id", "123", "--kernel-id"),
        ("--maxlen", "0", "--maxlen"),
        ("--prefix", "has space", "--prefix"),
        ("--redis-url", "http://127.0.0.1:6379", "--redis-url"),
    ],
)
def test_emit_refuses_invalid_values_in_one_line(
    redis_url: str,
    sync_redis: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    flag: str,
    value: str,
    named: str,
) -> None:
    argv = with_option([*EMIT, "--redis-url", redis_url], flag, value)
    assert main(argv, environ={}) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    assert named in captured.err
    assert "Traceback" not in captured.err
    assert sync_redis.dbsize() == 0


def test_result_on_another_event_is_refused(
    redis_url: str, sync_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = with_option([*EMIT, "--redis-url", redis_url], "--name", "kernel_started")
    assert main(argv, environ={}) == 2
    err = capsys.readouterr().err
    assert "--result" in err and "kernel_terminated" in err
    assert sync_redis.dbsize() == 0


def test_missing_flag_and_bad_environment_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(without_option(EMIT, "--owner-user-id"), environ={}) == 2
    assert "--owner-user-id" in capsys.readouterr().err
    assert main(EMIT, environ={"KEV_PREFIX": "bad prefix"}) == 2
    assert "--prefix" in capsys.readouterr().err
    assert main([], environ={}) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--help"], environ={}) == 0
    assert "--rate" in capsys.readouterr().out


def test_unreachable_redis_exits_1_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    assert main([*EMIT, "--redis-url", url], environ={}) == 1
    err = capsys.readouterr().err
    assert err.startswith("kev-publish emit: error: redis:")
    assert "Traceback" not in err
    assert main(["demo", "--count", "10", "--redis-url", url], environ={}) == 1
    err = capsys.readouterr().err
    assert "kev-publish demo: error: redis:" in err
    assert "Traceback" not in err


def test_demo_publishes_the_count_and_summarises(
    redis_url: str, sync_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["demo", "--rate", "3000", "--count", "600", "--sessions", "20", "--seed", "3"]
    assert main([*argv, "--redis-url", redis_url, "--prefix", "d"], environ={}) == 0
    captured = capsys.readouterr()
    assert sync_redis.xlen(Keys("d").history) == 600
    assert captured.out.startswith("published 600 events in ")
    assert "to d:events" in captured.out
    assert "Traceback" not in captured.err
    for _, fields in sync_redis.xrange(Keys("d").history):
        decode_event(fields[b"e"])


def test_demo_duration_bound(redis_url: str, sync_redis: redis.Redis) -> None:
    argv = ["demo", "--rate", "500", "--duration", "0.4", "--redis-url", redis_url]
    assert main(argv, environ={}) == 0
    # floor(500 * 0.4) = 200, within one 25 ms tick.
    assert abs(sync_redis.xlen(Keys().history) - 200) <= 500 * 0.025


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--rate", "0"),
        ("--rate", "fast"),
        ("--rate", "inf"),
        ("--sessions", "0"),
        ("--duration", "-1"),
        ("--count", "-5"),
        ("--tick", "0"),
        ("--seed", "x"),
    ],
)
def test_demo_refuses_invalid_values(
    redis_url: str, capsys: pytest.CaptureFixture[str], flag: str, value: str
) -> None:
    assert main(["demo", flag, value, "--redis-url", redis_url], environ={}) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_the_demo_ends_it_cleanly_with_a_summary(
    redis_url: str, sync_redis: redis.Redis, sig: signal.Signals
) -> None:
    env = {**os.environ, "KEV_REDIS_URL": redis_url, "KEV_PREFIX": "sig"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "publisher.cli", "demo", "--rate", "1000"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: sync_redis.xlen("sig:events") > 0, 10, "the demo to publish")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    match = re.match(r"interrupted; published ([\d,]+) events", out)
    assert match, out
    assert int(match.group(1).replace(",", "")) == sync_redis.xlen("sig:events")


def test_events_not_published_make_a_non_zero_exit(
    private_redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # The demo: Redis goes away mid-run and stays away; the summary is printed, then what
    # was not published, and the exit is 1.
    killer = threading.Timer(0.3, private_redis.stop, kwargs={"kill": True})
    killer.start()
    argv = ["demo", "--rate", "200", "--duration", "0.8", "--redis-url", private_redis.url]
    try:
        assert main(argv, environ={}) == 1
    finally:
        killer.join()
    err = capsys.readouterr().err
    assert "kev-publish demo: error: not all published: " in err and "undelivered" in err
    assert "Traceback" not in err
    # emit against the dead server: nothing printed on stdout, 1.
    assert main([*EMIT, "--redis-url", private_redis.url], environ={}) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "nothing was published" in captured.err


def test_emit_to_a_frozen_redis_exits_1_and_says_the_event_is_in_doubt(
    private_redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    # The event was sent and never answered: it may land when Redis resumes, so the message
    # must not say "nothing was published" (a caller would send it again: a duplicate).
    assert private_redis.proc is not None
    os.kill(private_redis.proc.pid, signal.SIGSTOP)
    try:
        assert main([*EMIT, "--redis-url", private_redis.url], environ={}) == 1
    finally:
        os.kill(private_redis.proc.pid, signal.SIGCONT)
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert "may or may not have been published (in doubt" in captured.err
    assert "nothing was published" not in captured.err


def test_emit_names_one_session_with_one_uuid_across_calls(
    redis_url: str, sync_redis: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --session-uuid/--kernel-id each call drew new random ones, so the v5 view
    showed one session under several sessionIds (#23): they derive from the owner key and
    the session name now; another session or owner gets others."""
    keys = Keys("cli")
    base = [*EMIT, "--redis-url", redis_url, "--prefix", "cli"]
    for argv in (
        base,
        base,  # the same session again
        with_option(base, "--session-id", "another-session"),
        with_option(base, "--owner-access-key", "AKIAOTHEROWNER000001"),
    ):
        assert main(argv, environ={}) == 0
    capsys.readouterr()
    events = [decode_event(fields[b"e"]) for _, fields in sync_redis.xrange(keys.history)]
    same = {(e.session_uuid, e.kernel_id) for e in events[:2]}
    assert len(same) == 1  # one session, one UUID and one main kernel across calls
    assert len({e.session_uuid for e in events}) == 3  # another session, another owner
