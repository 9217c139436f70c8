"""Which identity changes reach which open streams (``Grant.touched_by``), and the change
message's round trip: every kind of change, against a stream it touches and one it does not."""

from __future__ import annotations

import msgspec
import pytest

from gateway.identity.changes import MAX_NAMES, Change, decode_change, make_change
from gateway.identity.methods import SessionCredential, SignedCredential
from gateway.identity.models import Identity
from gateway.identity.visibility import StreamQuery
from gateway.replica.reauthorize import Grant

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
