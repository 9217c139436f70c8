"""``gateway tail``: follow the kernel event stream from a terminal or a script.

Signs with a keypair (flags, or Backend.AI's ``BACKEND_ACCESS_KEY`` / ``BACKEND_SECRET_KEY`` /
``BACKEND_ENDPOINT``), reconnects with ``Last-Event-ID`` so nothing is missed across a
replica restart, and prints each event as a readable line or as one JSON object per line.
Events go to stdout; every failed or ended connection, and when it tries again, to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Mapping
from datetime import datetime
from typing import TextIO

from gateway.cli.keypair import KeypairMissing, add_keypair_flags, keypair_from
from gateway.consumer import (
    DEFAULT_IDLE_TIMEOUT,
    KernelEventStream,
    RetryNotice,
    SSEEvent,
    StreamError,
)

__all__ = ["DEFAULT_URL", "add_parser", "format_event", "run"]

#: the demo's and compose's front door (nginx in front of the replicas)
DEFAULT_URL = "http://127.0.0.1:8080"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tail = sub.add_parser("tail", help="print kernel events as they happen")
    tail.add_argument(
        "--url", help=f"gateway or load balancer (env BACKEND_ENDPOINT; default {DEFAULT_URL})"
    )
    add_keypair_flags(tail)
    tail.add_argument("--session-id", help="only this session")
    tail.add_argument("--owner-access-key", help="sessions of this key")
    tail.add_argument("--group", help="only this group")
    tail.add_argument("--last-event-id", help="start after this id (replays what was missed)")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument("--count", type=int, default=None, help="exit after N events")
    tail.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT,
        help="seconds without a byte (event or ping) before the link counts as dead and is "
        f"reopened; keep it above the server's ping interval (default {DEFAULT_IDLE_TIMEOUT:g})",
    )
    tail.set_defaults(run=run)


def format_event(event: SSEEvent, as_json: bool) -> str:
    try:
        data = json.loads(event.data)
    except ValueError:
        data = None
    if not isinstance(data, dict):  # not the gateway's: shown as it came, never a traceback
        if as_json:
            return json.dumps({"id": event.id, "event": event.event, "data": event.data})
        return f"{event.event} {event.id} {event.data!r}"
    if as_json:
        return json.dumps({"id": event.id, "event": event.event, **data}, separators=(",", ":"))
    stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
    if event.event == "history_truncated":
        return (
            f"{stamp} {event.event:<18} history cannot show everything after "
            f"{data.get('lastEventId') or 'the last event'} (reason={data.get('reason')}, "
            f"oldest held {data.get('firstAvailableId')})"
        )
    result = f" result={data['result']}" if "result" in data else ""
    reason = f" reason={data['reason']!r}" if data.get("reason") else ""
    return (
        f"{stamp} {event.event:<18} {data.get('sessionName') or data.get('sessionId')!s:<28} "
        f"{data.get('ownerAccessKey')}"
        f"{result}{reason}"
    )


def _params(args: argparse.Namespace) -> dict[str, str]:
    params = {"sessionId": args.session_id, "ownerAccessKey": args.owner_access_key,
              "group": args.group}  # fmt: skip
    return {k: v for k, v in params.items() if v}


def _report(notice: RetryNotice) -> None:
    why = f"{notice.error}" if notice.error is not None else "the server ended the stream"
    print(f"gateway tail: {why}; retrying {notice.url} in {notice.delay:.1f} s",
          file=sys.stderr, flush=True)  # fmt: skip


async def _follow(args: argparse.Namespace, url: str, ak: str, sk: str, out: TextIO) -> int:
    stream = KernelEventStream(
        url,
        access_key=ak,
        secret_key=sk,
        params=_params(args),
        last_event_id=args.last_event_id,
        idle_timeout=args.idle_timeout or None,
        on_retry=_report,
    )
    seen = 0
    async for event in stream:
        print(format_event(event, args.json), file=out, flush=True)
        seen += 1
        if args.count is not None and seen >= args.count:
            break
    return 0


def run(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    url = args.url or env.get("BACKEND_ENDPOINT") or DEFAULT_URL
    try:
        access_key, secret_key = keypair_from(args, env)
    except KeypairMissing as exc:
        print(f"gateway tail: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_follow(args, url.rstrip("/"), access_key, secret_key, sys.stdout))
    except StreamError as exc:
        print(f"gateway tail: refused: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:
        print(f"gateway tail: {exc}", file=sys.stderr)
        return 2
