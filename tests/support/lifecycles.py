"""What a Backend.AI session may do next, written out here rather than taken from the
simulator (``publisher.demo``), so the tests check the simulator against the lifecycle and not
against itself."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence

from gateway.fanout.frames import v4_name
from publisher import KernelEvent
from publisher.demo import demo_identities
from publisher.schema import SLUG_PATTERN

__all__ = ["ALLOWED_NEXT", "SESSION_NEXT", "check_lifecycles"]

ALLOWED_NEXT: dict[str | None, set[str]] = {
    None: {"kernel_enqueued"},
    "kernel_enqueued": {"kernel_preparing", "kernel_cancelled"},
    "kernel_preparing": {"kernel_pulling", "kernel_creating", "kernel_cancelled"},
    "kernel_pulling": {"kernel_creating", "kernel_cancelled"},
    "kernel_creating": {"kernel_started", "kernel_terminating"},
    "kernel_started": {"kernel_success", "kernel_failure", "kernel_terminating"},
    "kernel_success": {"kernel_terminating"},
    "kernel_failure": {"kernel_terminating"},
    "kernel_terminating": {"kernel_terminated"},
    "kernel_terminated": set(),
    "kernel_cancelled": set(),
}

#: the session-level events of API v5 and later, in their own order
SESSION_NEXT: dict[str | None, set[str]] = {
    None: {"session_enqueued"},
    "session_enqueued": {"session_scheduled", "session_cancelled"},
    "session_scheduled": {"session_started", "session_cancelled", "session_terminated"},
    "session_started": {"session_success", "session_failure", "session_terminated"},
    "session_success": {"session_terminated"},
    "session_failure": {"session_terminated"},
    "session_terminated": set(),
    "session_cancelled": set(),
}


def check_lifecycles(events: Sequence[KernelEvent]) -> dict[str, list[str]]:
    """Assert every session's events follow the lifecycle as the v4 stream shows it (the
    main kernel, v4 names), and its session-level events their own order; returns the v4
    names per session id."""
    owners = {k.access_key: k for k in demo_identities().keypairs}
    by_session: dict[str, list[KernelEvent]] = defaultdict(list)
    for event in events:
        by_session[str(event.session_uuid)].append(event)
    names: dict[str, list[str]] = {}
    for session in by_session.values():
        first = session[0]
        assert re.match(SLUG_PATTERN, first.session_id)
        owner = owners[first.owner_access_key]
        assert owner.role != "monitor"
        assert (first.owner_user_id, first.domain) == (owner.user_id, owner.domain)
        assert first.group in owner.groups
        previous: str | None = None
        previous_session: str | None = None
        shown: list[str] = []
        for event in session:
            assert (event.session_id, event.owner_access_key, event.group) == (
                first.session_id,
                first.owner_access_key,
                first.group,
            )
            if event.name.startswith("session_"):
                assert event.name in SESSION_NEXT[previous_session], [e.name for e in session]
                previous_session = event.name
                assert event.kernel_id == first.kernel_id  # the main kernel's id
            name = v4_name(event)
            if name is None:
                assert event.cluster_idx > 0 or event.name.startswith("session_")
                continue
            assert event.kernel_id == first.kernel_id and event.cluster_role == "main"
            assert name in ALLOWED_NEXT[previous], [e.name for e in session]
            shown.append(name)
            if name == "kernel_terminated":
                assert event.result in ("SUCCESS", "FAILURE")
                assert event.reason != ""
            else:
                assert event.result is None
            if name == "kernel_cancelled":
                assert event.reason
            previous = name
        names[first.session_id] = shown
    return names
