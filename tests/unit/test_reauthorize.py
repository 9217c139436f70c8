"""Which identity changes reach which open streams (``Grant.touched_by``), and the change
message's round trip: every kind of change, against a stream it touches and one it does not;
and which streams share a grant."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import msgspec
import pytest

from gateway.fanout.filters import Filter
from gateway.fanout.hub import Hub
from gateway.identity.changes import MAX_NAMES, Change, decode_change, make_change
from gateway.identity.methods import SessionCredential, SignedCredential, SignedRequests
from gateway.identity.models import Identity
from gateway.identity.visibility import StreamQuery
from gateway.replica.reauthorize import Grant, Reauthorizer
from gateway.settings import FanoutSettings

ALICE = Identity("AKIAALICE", "alice", "user", "default")
DAVE = Identity("AKIADAVE", "dave", "admin", "default")


def _grant(identity: Identity = ALICE, **query: str) -> Grant:
    return Grant(SessionCredential(identity, session="s1"), StreamQuery(**query))  # type: ignore[arg-type]


# (change, a grant it touches, a grant it leaves alone)
CASES = {
    "the stream's keypair": (make_change(keys=["AKIAALICE"]), _grant(), _grant(DAVE)),
    "the stream's user": (make_change(users=["alice"]), _grant(), _grant(DAVE)),
    "the stream's session": (
        make_change(sessions=["s1"]), _grant(), Grant(SignedCredential(DAVE), StreamQuery()),
    ),
    "the stream's group": (
        make_change(groups=["default:ml"]), _grant(group="ml"), _grant(group="other"),
    ),
    "the owner key a domain admin watches": (
        make_change(users=["bob"]), _grant(DAVE, owner_access_key="AKIABOB"), _grant(DAVE),
    ),
    "everything": (Change(all=True), _grant(DAVE), None),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(CASES))
def test_a_change_reaches_exactly_the_streams_it_can_alter(kind: str) -> None:
    change, touched, untouched = CASES[kind]
    assert touched.touched_by(change)
    if untouched is not None:
        assert not untouched.touched_by(change)
    assert not touched.touched_by(Change())


def test_a_change_round_trips_and_merges_and_a_large_one_is_everything() -> None:
    change = make_change(keys=["b", "a", "a"], sessions=["s"])
    assert (
        decode_change(msgspec.msgpack.encode(change))
        == change
        == Change(("a", "b"), sessions=("s",))
    )
    merged = change.merged(make_change(users=["u"]))
    assert set(merged.keys) == {"a", "b"} and merged.users == ("u",) and merged
    assert not Change() and make_change(keys=map(str, range(MAX_NAMES + 1))) == Change(all=True)
    assert decode_change(b"\xc1 not msgpack") is None


# -- what streams share ---------------------------------------------------------------------


def _reauthorizer() -> tuple[Hub, Reauthorizer]:
    hub = Hub(FanoutSettings())
    methods = [SignedRequests(None)]  # type: ignore[arg-type]  # track() asks no store
    return hub, Reauthorizer(hub, None, methods, period=60)  # type: ignore[arg-type]


def _stream(hub: Hub, reauth: Reauthorizer, credential: SignedCredential, **query: str) -> Any:
    connection = hub.new_connection(Filter(), credential.identity.access_key)
    reauth.track(connection, credential, StreamQuery(**query))  # type: ignore[arg-type]
    return connection


def test_streams_opened_alike_share_one_grant_and_one_filter() -> None:
    """An SDK's or a dashboard's several streams hold one grant (its credential, identity
    and query) and one filter; another secret, identity or query is a grant of its own."""
    hub, reauth = _reauthorizer()
    first = _stream(hub, reauth, SignedCredential(DAVE, secret_digest=b"d1"))
    second = _stream(hub, reauth, SignedCredential(DAVE, secret_digest=b"d1"))
    assert second.grant is first.grant and second.filter is first.filter
    assert second.access_key is first.access_key
    others = [
        _stream(hub, reauth, SignedCredential(DAVE, secret_digest=b"d2")),
        _stream(hub, reauth, SignedCredential(ALICE, secret_digest=b"d1")),
        _stream(hub, reauth, SignedCredential(DAVE, secret_digest=b"d1"), group="ml"),
    ]
    assert len({id(c.grant) for c in [first, *others]}) == 4


def test_a_grant_a_re_check_moved_on_is_not_handed_to_a_stream_opened_as_before() -> None:
    """A re-check that finds the same filter for a new identity updates the shared grant's
    credential (every stream of it at once); a stream then opened with the identity as it
    was gets a grant of its own, which its own re-check judges."""
    hub, reauth = _reauthorizer()
    first = _stream(hub, reauth, SignedCredential(DAVE, secret_digest=b"d1"))
    monitor = Identity("AKIADAVE", "dave", "monitor", "default")
    first.grant.credential.identity = monitor  # what Reauthorizer._filter_verdict does
    again = _stream(hub, reauth, SignedCredential(DAVE, secret_digest=b"d1"))
    assert again.grant is not first.grant and again.grant.credential.identity == DAVE
    assert first.grant.credential.identity == monitor


def test_a_grant_and_a_filter_nobody_holds_are_not_kept() -> None:
    hub, reauth = _reauthorizer()
    connection = _stream(hub, reauth, SignedCredential(DAVE, secret_digest=b"d1"))
    grant, filter = weakref.ref(connection.grant), weakref.ref(connection.filter)
    del connection
    gc.collect()
    assert grant() is None and filter() is None
