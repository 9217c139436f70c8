"""Who sees what: a caller's identity and its stream query turned into a hub filter.

docs/design.md §4's role table:

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

import uuid
from dataclasses import dataclass

from gateway.errors import Forbidden, GroupNotFound
from gateway.fanout.filters import Filter
from gateway.fanout.frames import View

from .models import Identity
from .store import IdentityStore

__all__ = ["StreamQuery", "build_filter"]


@dataclass(frozen=True, slots=True)
class StreamQuery:
    """The stream's parameters; ``None`` where the client asked for everything (``*``)."""

    session_id: str | None = None
    owner_access_key: str | None = None
    group: str | None = None
    last_event_id: str | None = None
    #: API v5's ``sessionId``: one session by its UUID, whoever owns it (within the role's
    #: rights); it overrides the name and the owner key, as the manager's does
    session_uuid: uuid.UUID | None = None
    #: the session UUID came as the session's name (v5 ``name``/``sessionName``, as the
    #: official CLIs from 24.09 send ``backend.ai events <UUID>``): the manager (26.8,
    #: ``SessionRow.match_sessions``) matches it as an id first, among the owner key's own
    #: sessions, so the owner key still applies
    session_uuid_as_name: bool = False
    #: which API generation (and v5 scope) the stream shows
    view: View = "v4"
    #: ``resumable=1``: the client resumes with Last-Event-ID, so the server may end its
    #: stream to rebalance (``stream_max_lifetime``)
    resumable: bool = False


async def build_filter(identity: Identity, query: StreamQuery, store: IdentityStore) -> Filter:
    """The hub filter for ``identity`` asking ``query``, per the role table.

    Raises :class:`~gateway.errors.Forbidden` for an owner key the role may not watch and
    :class:`~gateway.errors.GroupNotFound` for a group unknown in the caller's scope."""
    role = identity.role
    owner_user_id = identity.user_id if role == "user" else None
    domain = identity.domain if role == "admin" else None

    owner_key = query.owner_access_key
    if owner_key is not None and owner_key != identity.access_key:
        if role == "user":
            raise Forbidden("Forbidden", "users may only watch their own access key")
        if role == "admin":
            resolved = await store.resolve(owner_key)
            if resolved is None or resolved[1].domain != identity.domain:
                raise Forbidden(
                    "Forbidden", "domain admins may only watch access keys of their domain"
                )

    if query.group is not None:
        scope = None if role in ("superadmin", "monitor") else identity.domain
        if not await store.group_exists(query.group, scope):
            raise GroupNotFound("No such group", f"group {query.group!r}")

    if query.session_uuid is not None:
        return Filter(
            owner_user_id=owner_user_id,
            domain=domain,
            group=query.group,
            session_uuid=query.session_uuid,
            owner_access_key=(owner_key or identity.access_key)
            if query.session_uuid_as_name
            else None,
        )
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
