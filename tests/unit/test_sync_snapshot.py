"""Backend.AI's rows to what the gateway stores (:func:`gateway.sync.desired`), pure: who may
stream, what is left out, and no secret in any repr."""

from __future__ import annotations

import uuid

from gateway.identity.models import Group, Keypair, User
from gateway.sync import Snapshot, desired
from gateway.sync.snapshot import DomainRow, GroupRow, KeypairRow, MembershipRow, UserRow

SECRET = "plaintextsecret0000000000000000000000001"
ALICE = uuid.UUID("00000000-0000-4000-8000-0000000000a1")
BOB = uuid.UUID("00000000-0000-4000-8000-0000000000b0")
GHOST = uuid.UUID("00000000-0000-4000-8000-000000000000")
RESEARCH = uuid.UUID("00000000-0000-4000-8000-0000000000c0")


def _snapshot(
    *,
    key_active: bool | None = True,
    status: str = "active",
    domain_active: bool | None = True,
    role: str | None = "user",
    domain: str | None = "default",
    secret: str | None = SECRET,
) -> Snapshot:
    return Snapshot(
        keypairs=(
            KeypairRow("AKALICE", secret, key_active, False, ALICE),
            KeypairRow("AKBOB", SECRET, True, True, BOB),
            KeypairRow("AKGHOST", SECRET, True, False, GHOST),
        ),
        users=(
            UserRow(ALICE, "alice@example.com", role, status, domain),
            UserRow(BOB, "bob@example.com", "admin", "active", "other"),
        ),
        groups=(
            GroupRow(RESEARCH, "research", "default", True),
            GroupRow(uuid.uuid4(), "old", "default", False),
            GroupRow(uuid.uuid4(), "unset", "default", None),
        ),
        memberships=(MembershipRow(ALICE, RESEARCH),),
        domains=(DomainRow("default", domain_active), DomainRow("other", True)),
    )


def test_an_active_user_with_an_active_key_in_an_active_domain_streams() -> None:
    skipped: list[str] = []
    state = desired(_snapshot(), skipped=skipped)
    assert state.keypairs["AKALICE"] == Keypair("AKALICE", SECRET, str(ALICE), True)
    assert state.users[str(ALICE)] == User(str(ALICE), "user", "default")
    assert state.users[str(BOB)] == User(str(BOB), "admin", "other")
    assert state.groups == frozenset({Group("default", "research")})
    # a keypair whose user row is missing is left out, and said why
    assert "AKGHOST" not in state.keypairs
    assert skipped == [f"keypair 'AKGHOST': its user {GHOST} is missing or left out"]


def test_each_of_backend_ais_conditions_makes_the_key_inactive_not_unknown() -> None:
    for snapshot in (
        _snapshot(key_active=False),
        _snapshot(key_active=None),
        _snapshot(status="inactive"),
        _snapshot(status="deleted"),
        _snapshot(status="before-verification"),
        _snapshot(domain_active=False),
        _snapshot(domain_active=None),
    ):
        state = desired(snapshot)
        assert state.keypairs["AKALICE"].active is False
        assert str(ALICE) in state.users
        assert state.keypairs["AKBOB"].active is True


def test_rows_the_store_cannot_hold_are_left_out_with_their_reason() -> None:
    skipped: list[str] = []
    state = desired(_snapshot(domain=None), skipped=skipped)
    assert str(ALICE) not in state.users and "AKALICE" not in state.keypairs
    assert f"user {ALICE}: no domain" in skipped

    skipped = []
    state = desired(_snapshot(secret=None), skipped=skipped)
    assert "AKALICE" not in state.keypairs
    assert "keypair 'AKALICE': no secret key" in skipped

    skipped = []
    state = desired(_snapshot(secret="short"), skipped=skipped)
    assert "AKALICE" not in state.keypairs
    assert not any("short" in reason for reason in skipped)  # never the secret itself

    skipped = []
    state = desired(_snapshot(role="owner"), skipped=skipped)
    assert str(ALICE) not in state.users
    assert f"user {ALICE}: unknown role 'owner'" in skipped
    assert not any("alice@example.com" in reason for reason in skipped)


def test_a_role_left_null_by_raw_sql_is_the_managers_default() -> None:
    assert desired(_snapshot(role=None)).users[str(ALICE)].role == "user"


def test_no_secret_in_any_repr() -> None:
    snapshot = _snapshot()
    state = desired(snapshot)
    for text in (repr(snapshot), repr(snapshot.keypairs[0]), repr(state), str(state)):
        assert SECRET not in text
    assert dict(snapshot.keypairs[0].__rich_repr__())["secret_key"] == "***"
