"""``kev-publish``: publish one kernel lifecycle event, or run the lifecycle simulator.

    kev-publish emit --name kernel_started --session-id mysession-01 \\
        --owner-access-key AKIANABBDUSEREXAMPLE --owner-user-id user@lablup.com
    kev-publish demo --rate 200 --sessions 50 --duration 60 --seed 7

This is the edge: the only place that reads the environment (``KEV_REDIS_URL``,
``KEV_PREFIX``) and prints. Exit codes: 0 done (a demo ended by Ctrl-C or SIGTERM included),
1 Redis failed or an event was not published, 2 invalid arguments (one line on stderr, no
traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import signal
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final, NoReturn, TextIO, cast

import redis

from .client import DEFAULT_MAXLEN, AsyncPublisher, SyncPublisher
from .connection import RedisURLError, check_url, connect_async, redact_url
from .demo import DEFAULT_TICK, DemoStats, LifecycleDemo
from .errors import PublishError
from .keys import DEFAULT_PREFIX, Keys
from .partitions import MAX_PARTITIONS
from .schema import EVENT_NAMES, RESULTS, EventName, InvalidEvent, KernelEvent, Result
from .secretinput import SecretError, resolve_secret

__all__ = ["main"]

PROG: Final = "kev-publish"
DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
# A CLI should fail in seconds, not hang, when Redis is unreachable or stalled.
_REDIS_OPTIONS: Final[dict[str, Any]] = {"socket_connect_timeout": 5.0, "socket_timeout": 10.0}


class _UsageError(Exception):
    """An argument that parses but is not valid; exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit 2), not the usage
    block: the message names the flag, ``--help`` has the rest. Both CLIs use it."""

    def error(self, message: str) -> NoReturn:
        # One line, no usage block: the message names the flag; --help has the rest.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _seconds(positive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            kind = "positive" if positive else "non-negative"
            raise argparse.ArgumentTypeError(f"must be a finite {kind} number, got {text!r}")
        return value

    return parse


def _uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text!r}") from None


def _redis_url(text: str) -> str:
    try:
        return check_url(text)
    except RedisURLError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _prefix(text: str) -> str:
    try:
        return Keys(text).prefix
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _partitions(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_PARTITIONS:
        raise argparse.ArgumentTypeError(f"partitions must be 1..{MAX_PARTITIONS}, got {text!r}")
    return n


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """The parser; defaults of the common options come from ``environ``."""
    common = OneLineParser(add_help=False)
    group = common.add_argument_group("redis")
    # argparse runs string defaults through `type`, so a bad KEV_* value is reported too.
    group.add_argument(
        "--redis-url",
        type=_redis_url,
        default=environ.get("KEV_REDIS_URL", DEFAULT_REDIS_URL),
        help="redis://, rediss://, unix://, redis+sentinel:// or redis+cluster:// URL "
        "(env KEV_REDIS_URL; default %(default)s)",
    )
    group.add_argument(
        "--redis-url-file",
        metavar="PATH",
        help="read the URL from this file (- = stdin; env KEV_REDIS_URL_FILE): a URL with a "
        "password belongs in a file or the environment, not on the command line",
    )
    group.add_argument(
        "--redis-password-file",
        metavar="PATH",
        help="the password of the URL's user, when the URL has none (- = stdin; env "
        "KEV_REDIS_PASSWORD or KEV_REDIS_PASSWORD_FILE)",
    )
    group.add_argument(
        "--redis-sentinel-password-file",
        metavar="PATH",
        help="the Sentinels' own password, for a redis+sentinel:// URL whose Sentinels need "
        "one (- = stdin; env KEV_REDIS_SENTINEL_PASSWORD or KEV_REDIS_SENTINEL_PASSWORD_FILE; "
        "the URL's sentinel_password wins)",
    )
    group.add_argument(
        "--prefix",
        type=_prefix,
        default=environ.get("KEV_PREFIX", DEFAULT_PREFIX),
        help="key prefix shared with the gateway (env KEV_PREFIX; default %(default)s)",
    )
    group.add_argument(
        "--partitions",
        type=_partitions,
        default=environ.get("KEV_PARTITIONS", "1"),
        help="the deployment's partitions, as the gateway's GATEWAY_REDIS_PARTITIONS (env "
        "KEV_PARTITIONS; default %(default)s; Redis records it: another number is refused)",
    )
    group.add_argument(
        "--maxlen",
        type=_positive_int,
        default=DEFAULT_MAXLEN,
        help="approximate bound of the history stream (default %(default)s)",
    )

    parser = OneLineParser(
        prog=PROG, description="Publish Backend.AI kernel lifecycle events to Redis."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    emit = commands.add_parser(
        "emit", parents=[common], help="publish one event and print its stream id"
    )
    emit.add_argument("--name", required=True, help="event name, e.g. kernel_started")
    emit.add_argument("--session-id", required=True, help="session name (a slug)")
    emit.add_argument("--owner-access-key", required=True)
    emit.add_argument("--owner-user-id", required=True)
    emit.add_argument("--domain", default="default", help="domain name (default %(default)s)")
    emit.add_argument("--group", default="default", help="group name (default %(default)s)")
    emit.add_argument("--reason", default="")
    emit.add_argument(
        "--result",
        help="kernel_terminated only: UNDEFINED, SUCCESS or FAILURE (default UNDEFINED there)",
    )
    emit.add_argument(
        "--session-uuid",
        type=_uuid,
        help="default: derived from the owner access key and the session name, so every "
        "call for one session names it with one UUID",
    )
    emit.add_argument(
        "--kernel-id", type=_uuid, help="default: derived from the session UUID (its main kernel)"
    )

    demo = commands.add_parser(
        "demo", parents=[common], help="simulate many session lifecycles at a steady rate"
    )
    demo.add_argument(
        "--rate", type=_seconds(positive=True), default=20.0, help="events per second"
    )
    demo.add_argument(
        "--sessions", type=_positive_int, default=30, help="lifecycles in flight at once"
    )
    demo.add_argument(
        "--duration", type=_seconds(positive=False), help="stop after this many seconds"
    )
    demo.add_argument("--count", type=_count, help="stop after this many events")
    demo.add_argument("--seed", type=int, help="seed of the simulation (default: random)")
    demo.add_argument(
        "--tick",
        type=_seconds(positive=True),
        default=DEFAULT_TICK,
        help="seconds between two batches (default %(default)s)",
    )
    return parser


#: the namespace of the session UUIDs ``kev-publish emit`` derives (a fixed, random UUID)
_EMIT_NAMESPACE: Final = uuid.UUID("6f1b7c52-2d0a-4c8e-9a4e-3b1f0d5e7a21")


def _event(args: argparse.Namespace) -> KernelEvent:
    if args.name not in EVENT_NAMES:
        raise _UsageError(
            f"--name: unknown event name {args.name!r} (one of {', '.join(sorted(EVENT_NAMES))})"
        )
    result = args.result
    if result is None and args.name == "kernel_terminated":
        result = "UNDEFINED"
    if result is not None and result not in RESULTS:
        raise _UsageError(f"--result: {result!r} is not one of {', '.join(sorted(RESULTS))}")
    # one session, one UUID across calls: the v5 view groups by it (a random one per call
    # showed one session under several sessionIds)
    session_uuid = args.session_uuid or uuid.uuid5(
        _EMIT_NAMESPACE, f"{args.owner_access_key}/{args.session_id}"
    )
    try:
        return KernelEvent(
            name=cast(EventName, args.name),
            session_id=args.session_id,
            session_uuid=session_uuid,
            kernel_id=args.kernel_id or uuid.uuid5(session_uuid, "main"),
            owner_access_key=args.owner_access_key,
            owner_user_id=args.owner_user_id,
            domain=args.domain,
            group=args.group,
            reason=args.reason,
            result=cast(Result | None, result),
        )
    except InvalidEvent as exc:
        # The schema's messages start with the field name; say it as the flag.
        field, _, detail = str(exc).partition(": ")
        raise _UsageError(f"--{field.replace('_', '-')}: {detail}") from exc


def _emit(args: argparse.Namespace, out: TextIO) -> int:
    event = _event(args)
    with SyncPublisher.from_url(
        args.redis_url, prefix=args.prefix, maxlen=args.maxlen, timeout=5.0,
        password=args.redis_password, sentinel_password=args.redis_sentinel_password,
        partitions=args.partitions,
    ) as pub:  # fmt: skip
        stream_id = pub.publish(event)
        # A one-shot command has no later moment to flush in: a short last try, then fail.
        report = pub.close(timeout=1.0)
    if report.in_doubt:  # sent, and Redis never answered: it may run it when it resumes
        raise redis.ConnectionError(
            f"{redact_url(args.redis_url)}: the event may or may not have been published "
            f"(in doubt: sent, no answer; check the history before sending it again) "
            f"({report.last_error})"
        )
    if not report.ok:
        raise redis.ConnectionError(
            f"{redact_url(args.redis_url)}: nothing was published ({report.last_error})"
        )
    print(stream_id or "(published; stream id unknown)", file=out)
    return 0


class _Progress:
    """The demo's progress line on stderr: redrawn in place on a terminal (at most as often
    as the demo reports, a few times a second); elsewhere (logs) a line every few seconds."""

    def __init__(self, err: TextIO, log_interval: float = 5.0) -> None:
        self._err = err
        self._tty = err.isatty()
        self._log_interval = log_interval
        self._last_log = -math.inf
        self._drawn = False

    def __call__(self, stats: DemoStats) -> None:
        line = (
            f"demo: {stats.published:,} events, {stats.rate:,.0f}/s, "
            f"{stats.active_sessions} sessions in flight, {stats.sessions_finished:,} finished, "
            f"{stats.elapsed:.1f} s"
        )
        if self._tty:
            self._err.write(f"\r{line}\x1b[K")
            self._drawn = True
        elif stats.elapsed - self._last_log >= self._log_interval:
            self._err.write(f"{line}\n")
            self._last_log = stats.elapsed
        self._err.flush()

    def close(self) -> None:
        if self._drawn:
            self._err.write("\n")
            self._err.flush()
            self._drawn = False


def _summary(stats: DemoStats, history: str, interrupted: bool) -> str:
    head = "interrupted; " if interrupted else ""
    lines = [
        f"{head}published {stats.published:,} events in {stats.elapsed:.2f} s "
        f"({stats.rate:,.1f}/s) to {history}; sessions: {stats.sessions_started:,} started, "
        f"{stats.sessions_finished:,} finished, {stats.active_sessions:,} in flight",
        "  " + ", ".join(f"{name} {n:,}" for name, n in sorted(stats.by_name.items())),
    ]
    if stats.behind:
        lines.append(f"  {stats.behind:,} due events not sent: Redis could not keep up with --rate")
    return "\n".join(lines)


class _Interrupts:
    """SIGINT/SIGTERM during the demo: the first stops it after the batch in flight, a
    second one cancels it outright."""

    def __init__(self, demo: LifecycleDemo, task: asyncio.Task[object]) -> None:
        self._demo = demo
        self._task = task
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        if self.count == 1:
            self._demo.stop()
        else:
            self._task.cancel()

    @contextmanager
    def installed(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        done: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self)
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # not the main thread, or no signals here: Ctrl-C stays fatal
            done.append(sig)
        try:
            yield
        finally:
            for sig in done:
                loop.remove_signal_handler(sig)


async def _demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    progress = _Progress(err)
    client = connect_async(
        args.redis_url,
        password=args.redis_password,
        sentinel_password=args.redis_sentinel_password,
        **_REDIS_OPTIONS,
    )
    await client.ping()  # unreachable at the start is an error; later outages are buffered
    async with AsyncPublisher(
        client,
        prefix=args.prefix,
        maxlen=args.maxlen,
        owns_client=True,
        partitions=args.partitions,
    ) as publisher:
        demo = LifecycleDemo(
            publisher,
            rate=args.rate,
            sessions=args.sessions,
            rng=random.Random(args.seed),
            duration=args.duration,
            max_events=args.count,
            tick=args.tick,
            progress=progress,
        )
        task = asyncio.current_task()
        assert task is not None
        interrupts = _Interrupts(demo, task)
        code = 0
        try:
            with interrupts.installed():
                stats = await demo.run()
        except asyncio.CancelledError:
            if interrupts.count < 2:
                raise
            task.uncancel()  # our own cancel (second Ctrl-C), handled here
            stats = demo.stats()
        except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
            progress.close()
            print(f"{PROG} demo: error: redis: {exc}", file=err)
            stats, code = demo.stats(), 1
        progress.close()
        print(_summary(stats, publisher.keys.history, interrupts.count > 0), file=out)
        report = await publisher.aclose()  # flushes what is queued, for up to its timeout
        if not report.ok:
            print(f"{PROG} demo: error: not all published: {report.summary()}", file=err)
            code = 1
        return code


def _resolve_secrets(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    """``--redis-url-file`` / ``KEV_REDIS_URL_FILE`` (when no URL was given otherwise) and
    the password: flag file, ``KEV_REDIS_PASSWORD``, ``KEV_REDIS_PASSWORD_FILE`` (the
    Sentinels' likewise, ``KEV_REDIS_SENTINEL_PASSWORD[_FILE]``)."""
    if args.redis_url_file is not None or (
        "KEV_REDIS_URL" not in env and env.get("KEV_REDIS_URL_FILE")
    ):
        url = resolve_secret(None, args.redis_url_file, env, "KEV_REDIS_URL", what="--redis-url")
        args.redis_url = check_url(url or DEFAULT_REDIS_URL)
    args.redis_password = resolve_secret(
        None, args.redis_password_file, env, "KEV_REDIS_PASSWORD", what="--redis-password"
    )
    args.redis_sentinel_password = resolve_secret(
        None, args.redis_sentinel_password_file, env, "KEV_REDIS_SENTINEL_PASSWORD",
        what="--redis-sentinel-password",
    )  # fmt: skip


def main(argv: list[str] | None = None, *, environ: Mapping[str, str] | None = None) -> int:
    """Run ``kev-publish``; returns the exit code."""
    env = os.environ if environ is None else environ
    try:
        args = build_parser(env).parse_args(argv)
    except SystemExit as exc:  # --help, or an argparse error already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        _resolve_secrets(args, env)
        if args.command == "emit":
            return _emit(args, sys.stdout)
        return asyncio.run(_demo(args, sys.stdout, sys.stderr))
    except (_UsageError, SecretError, RedisURLError) as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (redis.RedisError, PublishError) as exc:
        print(f"{PROG} {args.command}: error: redis: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
