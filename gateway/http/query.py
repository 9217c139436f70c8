"""The stream endpoint's query string and ``Last-Event-ID`` header, parsed and checked."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Final, Literal
from urllib.parse import parse_qsl

from gateway.errors import InvalidParams
from gateway.fanout.frames import View, parse_stream_id
from gateway.identity.visibility import StreamQuery
from publisher.partitions import decode_vector, is_vector
from publisher.schema import SLUG_PATTERN

__all__ = ["ALIASES", "MAX_QUERY_BYTES", "Api", "parse_query"]

MAX_QUERY_BYTES: Final = 2048
_SLUG: Final = re.compile(SLUG_PATTERN)
# every pattern is matched against the whole value (fullmatch): "$" alone lets "\n" through
_ACCESS_KEY: Final = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_GROUP: Final = re.compile(r"[^\x00-\x20\x7f]{1,64}")
#: which endpoint a query is for: ``/stream/kernel/_/events`` (API v4) or ``/events/session``
Api = Literal["v4", "v5"]

#: per API, each parameter and the spellings Backend.AI's managers (and SDKs) used for it.
#: v4: ``sessionId`` is the session's name; v5: ``name``/``sessionName`` is, ``sessionId``
#: its UUID, and ``scope`` picks session- or kernel-level events.
ALIASES: Final[dict[Api, dict[str, tuple[str, ...]]]] = {
    "v4": {
        "sessionId": ("sessionId",),
        "ownerAccessKey": ("ownerAccessKey", "owner_access_key"),
        "group": ("group", "groupName"),
        "lastEventId": ("lastEventId",),
        "resumable": ("resumable",),
    },
    "v5": {
        "name": ("name", "sessionName"),
        "sessionId": ("sessionId",),
        "ownerAccessKey": ("ownerAccessKey", "owner_access_key"),
        "group": ("group", "groupName"),
        "scope": ("scope",),
        "lastEventId": ("lastEventId",),
        "resumable": ("resumable",),
    },
}
_CANONICAL: Final = {
    api: {alias: name for name, aliases in table.items() for alias in aliases}
    for api, table in ALIASES.items()
}
_FLAGS: Final = {"1": True, "true": True, "0": False, "false": False}
_SCOPES: Final[dict[str, View]] = {"*": "all", "session": "session", "kernel": "kernel"}


def _bad(msg: str) -> InvalidParams:
    return InvalidParams("Invalid API parameters", msg)


def parse_query(query_string: bytes, headers: Mapping[str, str], api: Api = "v4") -> StreamQuery:
    """The stream's parameters and the ``Last-Event-ID`` header, checked, for ``api``.

    Raises :class:`~gateway.errors.InvalidParams` for an unknown, repeated or malformed
    parameter or an id this server cannot have sent."""
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
        canonical = _CANONICAL[api].get(name)
        if canonical is None:
            raise _bad(f"unknown parameter {name[:40]!r}")
        if canonical in params:
            spellings = " or ".join(ALIASES[api][canonical])
            raise _bad(f"parameter {canonical!r} is given twice (as {spellings})")
        params[canonical] = value

    session_uuid: uuid.UUID | None = None
    uuid_as_name = False
    view: View = "v4"
    if api == "v4":
        name_param, session_id = "sessionId", params.get("sessionId", "*")
    else:
        name_param, session_id = "name", params.get("name", "*")
        raw_uuid = params.get("sessionId")
        if raw_uuid is not None:
            try:
                session_uuid = uuid.UUID(raw_uuid)
            except ValueError:
                raise _bad(f"sessionId {raw_uuid[:70]!r} is not a session UUID") from None
        if session_uuid is None and session_id != "*":
            # the official CLIs from 24.09 send `backend.ai events <UUID>` as the name: the
            # manager matches a name that parses as a UUID as the session's id first
            # (26.8: SessionRow.match_sessions), among the owner key's sessions
            try:
                session_uuid = uuid.UUID(session_id)
            except ValueError:
                pass
            else:
                uuid_as_name, session_id = True, "*"
        scope = params.get("scope", "*")
        if scope not in _SCOPES:
            raise _bad(f"scope {scope[:20]!r} is not '*', 'session' or 'kernel'")
        view = _SCOPES[scope]
    if session_id != "*" and not _SLUG.fullmatch(session_id):
        raise _bad(f"{name_param} {session_id[:70]!r} is not '*' or a session name")
    owner = params.get("ownerAccessKey")
    if owner is not None and not _ACCESS_KEY.fullmatch(owner):
        raise _bad(f"ownerAccessKey {owner[:70]!r} is not an access key")
    group = params.get("group", "*")
    if group != "*" and not _GROUP.fullmatch(group):
        raise _bad(f"group {group[:70]!r} is not '*' or a group name")

    # A client that resumes says so (this gateway's extension), so it may be rebalanced.
    resumable = params.get("resumable", "0")
    if resumable not in _FLAGS:
        raise _bad(f"resumable {resumable[:20]!r} is not 1, 0, true or false")

    # EventSource sends the header on reconnect; it is newer than any id baked into the URL.
    last_id = headers.get("last-event-id") or params.get("lastEventId") or None
    if last_id is not None:
        try:
            if is_vector(last_id):  # a stream spanning partitions (publisher.partitions)
                decode_vector(last_id, int(last_id.partition("_")[0] or "x"))
            else:
                parse_stream_id(last_id)
        except ValueError:
            raise _bad(
                f"Last-Event-ID {last_id[:70]!r} is not an event id this server sent"
            ) from None
    return StreamQuery(
        session_id=None if session_id == "*" else session_id,
        owner_access_key=owner,
        group=None if group == "*" else group,
        last_event_id=last_id,
        session_uuid=session_uuid,
        session_uuid_as_name=uuid_as_name,
        view=view,
        resumable=_FLAGS[resumable],
    )
