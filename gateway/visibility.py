"""Who sees what: the stream's query parameters, checked, and turned into a hub filter.

DESIGN.md §4's role table:

=============  ===================================  =====================================
role           sees                                 may pass ``ownerAccessKey``
=============  ===================================  =====================================
user           sessions owned by its own user       only its own key, else 403
admin          every event in its domain            keys of users in its domain, else 403
superadmin     every event                          any key
monitor        every event, read only               any key
=============  ===================================  =====================================
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl

from publisher.schema import SLUG_PATTERN

from .errors import Problem
from .hub import Filter
from .identity import Identity, IdentityStore

__all__ = ["MAX_QUERY_BYTES", "StreamQuery", "build_filter", "parse_query"]

MAX_QUERY_BYTES: Final = 2048
_SLUG: Final = re.compile(SLUG_PATTERN)
_ACCESS_KEY: Final = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_GROUP: Final = re.compile(r"^[^\x00-\x20\x7f]{1,64}$")
_STREAM_ID: Final = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
_KNOWN: Final = frozenset({"sessionId", "ownerAccessKey", "group", "groupName", "lastEventId"})


@dataclass(frozen=True, slots=True)
class StreamQuery:
    """The stream's parameters; ``None`` where the client asked for everything (``*``)."""

    session_id: str | None = None
    owner_access_key: str | None = None
    group: str | None = None
    last_event_id: str | None = None


def _bad(msg: str) -> Problem:
    return Problem(400, "invalid-api-params", "Invalid API parameters", msg)


def parse_query(query_string: bytes, headers: Mapping[str, str]) -> StreamQuery:
    """Validate the query and the ``Last-Event-ID`` header; 400 for anything off."""
    if len(query_string) > MAX_QUERY_BYTES:
        raise _bad(f"the query string is over {MAX_QUERY_BYTES} bytes")
    try:
        pairs = parse_qsl(
            query_string.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=16,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad(f"the query string cannot be parsed: {exc}") from exc
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in _KNOWN:
            raise _bad(f"unknown parameter {name[:40]!r}")
        if name in params:
            raise _bad(f"parameter {name!r} is given twice")
        params[name] = value
    if "group" in params and "groupName" in params:
        raise _bad("give either group or groupName, not both")

    session_id = params.get("sessionId", "*")
    if session_id != "*" and not _SLUG.match(session_id):
        raise _bad(f"sessionId {session_id[:70]!r} is not '*' or a session name")
    owner = params.get("ownerAccessKey")
    if owner is not None and not _ACCESS_KEY.match(owner):
        raise _bad(f"ownerAccessKey {owner[:70]!r} is not an access key")
    group = params.get("group", params.get("groupName", "*"))
    if group != "*" and not _GROUP.match(group):
        raise _bad(f"group {group[:70]!r} is not '*' or a group name")

    # EventSource sends the header on reconnect; it is newer than any id baked into the URL.
    last_id = headers.get("last-event-id") or params.get("lastEventId") or None
    if last_id is not None and not _STREAM_ID.match(last_id):
        raise _bad(f"Last-Event-ID {last_id[:70]!r} is not an event id this server sent")
    return StreamQuery(
        session_id=None if session_id == "*" else session_id,
        owner_access_key=owner,
        group=None if group == "*" else group,
        last_event_id=last_id,
    )


def _forbidden(msg: str) -> Problem:
    return Problem(403, "generic-forbidden", "Forbidden", msg)


async def build_filter(identity: Identity, query: StreamQuery, store: IdentityStore) -> Filter:
    """The hub filter for ``identity`` asking ``query``: 403 / 404 per the role table."""
    role = identity.role
    owner_user_id = identity.user_id if role == "user" else None
    domain = identity.domain if role == "admin" else None

    owner_key = query.owner_access_key
    if owner_key is not None and owner_key != identity.access_key:
        if role == "user":
            raise _forbidden("users may only watch their own access key")
        if role == "admin":
            resolved = await store.resolve(owner_key)
            if resolved is None or resolved[1].domain != identity.domain:
                raise _forbidden("domain admins may only watch access keys of their domain")

    if query.group is not None:
        scope = None if role in ("superadmin", "monitor") else identity.domain
        if not await store.group_exists(query.group, scope):
            raise Problem(404, "group-not-found", "No such group", f"group {query.group!r}")

    session_owner = None
    if query.session_id is not None:
        session_owner = owner_key or identity.access_key
    return Filter(
        owner_user_id=owner_user_id,
        domain=domain,
        session_id=query.session_id,
        owner_access_key=session_owner or owner_key,
        group=query.group,
    )
