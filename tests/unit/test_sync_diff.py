"""The identity sync's diff, pure: applying ``diff(current, desired, managed)`` to
``current`` (with the identity store's rules: a keypair needs its user, a user is removed
only without keypairs) gives ``desired`` on the syncer's part and leaves every other entry as
it was; and the guard that refuses a mass removal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.identity.models import ROLES, Group, Keypair, Role, User
from gateway.sync import Changes, Managed, StoreState, SyncRefused, check_removals, diff

ACCESS_KEYS = [f"AK{i}" for i in range(8)]
USER_IDS = [f"u{i}" for i in range(5)]
GROUPS = [Group(d, n) for d in ("d0", "d1") for n in ("g0", "g1", "g2")]
SECRETS = ["s" * 16, "t" * 16, "u" * 16]
ROLE_NAMES = sorted(ROLES)


@st.composite
def states(draw: Callable[..., Any], *, hashes: bool = True) -> StoreState:
    """A consistent store: every keypair's user is stored."""
    user_ids = draw(st.sets(st.sampled_from(USER_IDS)))
    users = {
        uid: User(
            uid,
            cast(Role, draw(st.sampled_from(ROLE_NAMES))),
            draw(st.sampled_from(["d0", "d1"])),
            draw(st.sampled_from(["", "hash1"])) if hashes else "",
        )
        for uid in user_ids
    }
    keypairs: dict[str, Keypair] = {}
    if users:
        for ak in draw(st.sets(st.sampled_from(ACCESS_KEYS))):
            keypairs[ak] = Keypair(
                ak,
                draw(st.sampled_from(SECRETS)),
                draw(st.sampled_from(sorted(users))),
                draw(st.booleans()),
            )
    groups = frozenset(draw(st.sets(st.sampled_from(GROUPS))))
    return StoreState(keypairs=keypairs, users=users, groups=groups)


managed_sets = st.builds(
    Managed,
    keypairs=st.frozensets(st.sampled_from(ACCESS_KEYS)),
    users=st.frozensets(st.sampled_from(USER_IDS)),
    groups=st.frozensets(st.sampled_from(GROUPS)),
)


def applied(current: StoreState, changes: Changes) -> StoreState:
    """What :func:`gateway.sync.apply` does to the store, in its order, with the store's
    refusals as assertions (so the order is checked too)."""
    users = dict(current.users)
    keypairs = dict(current.keypairs)
    groups = set(current.groups)
    for user in (*changes.users_added, *changes.users_updated):
        users[user.user_id] = user
    for kp in (*changes.keypairs_added, *changes.keypairs_updated, *changes.keypairs_deactivated):
        assert kp.user_id in users, "a keypair written before its user"
        keypairs[kp.access_key] = kp
    for ak in changes.keypairs_removed:
        del keypairs[ak]
    for uid in changes.users_removed:
        assert all(kp.user_id != uid for kp in keypairs.values()), "a user removed with keys"
        del users[uid]
    groups |= set(changes.groups_added)
    groups -= set(changes.groups_removed)
    return StoreState(keypairs=keypairs, users=users, groups=frozenset(groups))


@settings(max_examples=400, deadline=None, database=None)
@given(states(), states(hashes=False), managed_sets)
def test_applying_the_diff_gives_desired_on_the_managed_part(
    current: StoreState, desired: StoreState, managed: Managed
) -> None:
    changes = diff(current, desired, managed)
    result = applied(current, changes)

    # Backend.AI's entries are there, as Backend.AI has them (a stored password kept)
    for ak, kp in desired.keypairs.items():
        assert result.keypairs[ak] == kp
    for uid, user in desired.users.items():
        got = result.users[uid]
        assert (got.role, got.domain) == (user.role, user.domain)
        before = current.users.get(uid)
        assert got.password_hash == (before.password_hash if before else "")
    assert desired.groups <= result.groups
    # ... and they are the syncer's from now on
    assert changes.managed == Managed(
        frozenset(desired.keypairs), frozenset(desired.users), desired.groups
    )

    # the syncer's entries Backend.AI no longer has are gone (a user still holding an
    # operator's keypair is handed back instead)
    for ak in managed.keypairs - desired.keypairs.keys():
        assert ak not in result.keypairs
    for uid in managed.users - desired.users.keys():
        if uid in changes.released:
            assert result.users[uid] == current.users[uid]
            assert any(kp.user_id == uid for kp in result.keypairs.values())
        else:
            assert uid not in result.users
    assert not (managed.groups - desired.groups) & result.groups

    # everything else is untouched, and nothing new appears
    for ak, kp in current.keypairs.items():
        if ak not in managed.keypairs and ak not in desired.keypairs:
            assert result.keypairs[ak] == kp
    for uid, user in current.users.items():
        if uid not in managed.users and uid not in desired.users:
            assert result.users[uid] == user
    for group in current.groups - managed.groups - desired.groups:
        assert group in result.groups
    assert result.keypairs.keys() <= current.keypairs.keys() | desired.keypairs.keys()
    assert result.users.keys() <= current.users.keys() | desired.users.keys()
    assert result.groups <= current.groups | desired.groups

    # a second diff finds nothing to do
    again = diff(result, desired, changes.managed)
    assert not again
    assert again.managed == changes.managed


@settings(max_examples=200, deadline=None, database=None)
@given(states(), states(hashes=False), managed_sets)
def test_the_counts_and_the_share_describe_the_changes(
    current: StoreState, desired: StoreState, managed: Managed
) -> None:
    changes = diff(current, desired, managed)
    share = changes.removed_share(current)
    assert 0.0 <= share <= 1.0
    for kp in changes.keypairs_deactivated:
        assert current.keypairs[kp.access_key].active and not kp.active
    for kp in changes.keypairs_added:
        assert kp.access_key not in current.keypairs
    assert set(changes.keypairs_removed) <= managed.keypairs
    assert bool(changes) == bool(
        changes.added or changes.updated or changes.deactivated or changes.removed
    )
    if share == 0.0:
        check_removals(changes, current, max_removal_share=0.0)


def _keys(n: int, *, active: bool = True, user: str = "u0") -> dict[str, Keypair]:
    return {f"AK{i}": Keypair(f"AK{i}", "s" * 16, user, active) for i in range(n)}


def _state(keypairs: dict[str, Keypair]) -> StoreState:
    users = {kp.user_id: User(kp.user_id, "user", "d0") for kp in keypairs.values()}
    return StoreState(keypairs=keypairs, users=users)


def _managed(state: StoreState) -> Managed:
    return Managed(frozenset(state.keypairs), frozenset(state.users), state.groups)


def test_removing_more_than_the_share_is_refused_unless_forced() -> None:
    current = _state(_keys(10))
    truncated = _state({ak: kp for ak, kp in current.keypairs.items() if ak in ("AK0", "AK1")})
    changes = diff(current, truncated, _managed(current))
    assert changes.removed_share(current) == pytest.approx(0.8)
    with pytest.raises(
        SyncRefused,
        match=r"remove 8 and deactivate 0 keypairs and change .* of 0 more, 80% of the 10",
    ):
        check_removals(changes, current, max_removal_share=0.5)
    check_removals(changes, current, max_removal_share=0.5, force=True)
    check_removals(changes, current, max_removal_share=0.8)


def test_deactivating_counts_as_removing() -> None:
    current = _state(_keys(4))
    everyone_off = _state(_keys(4, active=False))
    changes = diff(current, everyone_off, _managed(current))
    assert [kp.access_key for kp in changes.keypairs_deactivated] == ["AK0", "AK1", "AK2", "AK3"]
    assert changes.deactivated == 4 and changes.updated == 0
    assert changes.removed_share(current) == 1.0
    with pytest.raises(SyncRefused, match="deactivate 4"):
        check_removals(changes, current, max_removal_share=0.5)


def test_half_is_allowed_and_inactive_or_unmanaged_keys_do_not_count() -> None:
    mine = _keys(4)
    operators = {f"OP{i}": Keypair(f"OP{i}", "s" * 16, "u0", True) for i in range(10)}
    dormant = {f"IN{i}": Keypair(f"IN{i}", "s" * 16, "u0", False) for i in range(10)}
    current = _state({**mine, **operators, **dormant})
    managed = Managed(frozenset(mine) | frozenset(dormant), frozenset({"u0"}))
    # two of my four active keys go, and all ten inactive ones: half of the active ones
    desired = _state({ak: kp for ak, kp in mine.items() if ak in ("AK0", "AK1")})
    changes = diff(current, desired, managed)
    assert len(changes.keypairs_removed) == 12
    assert changes.removed_share(current) == 0.5
    check_removals(changes, current, max_removal_share=0.5)
    assert not {ak for ak in operators if ak in changes.keypairs_removed}


def test_a_first_sync_over_an_empty_store_is_never_refused() -> None:
    current = StoreState()
    changes = diff(current, _state(_keys(3)), Managed())
    assert changes.removed_share(current) == 0.0
    check_removals(changes, current, max_removal_share=0.0)
    assert changes.added == 4  # three keypairs and their user


def test_an_entry_imported_by_hand_that_backend_ai_has_becomes_managed() -> None:
    hand = Keypair("AK0", "s" * 16, "u0", True)
    current = StoreState(keypairs={"AK0": hand}, users={"u0": User("u0", "admin", "d0", "pw-hash")})
    backend_ai = StoreState(
        keypairs={"AK0": Keypair("AK0", "t" * 16, "u0", False)},
        users={"u0": User("u0", "user", "d0")},
    )
    changes = diff(current, backend_ai, Managed())
    assert changes.keypairs_deactivated == (backend_ai.keypairs["AK0"],)
    assert changes.users_updated == (User("u0", "user", "d0", "pw-hash"),)
    assert changes.managed.keypairs == {"AK0"} and changes.managed.users == {"u0"}


def test_a_gone_user_holding_an_operators_keypair_is_released_not_removed() -> None:
    current = StoreState(
        keypairs={
            "AK0": Keypair("AK0", "s" * 16, "u0", True),
            "OP": Keypair("OP", "s" * 16, "u0", True),
        },
        users={"u0": User("u0", "user", "d0")},
    )
    changes = diff(current, StoreState(), Managed(frozenset({"AK0"}), frozenset({"u0"})))
    assert changes.keypairs_removed == ("AK0",)
    assert changes.users_removed == ()
    assert changes.released == ("u0",)
    assert changes.managed == Managed()


def test_no_secret_in_the_changes_repr() -> None:
    current = StoreState()
    secret = "verysecretvalue-0123456789"
    changes = diff(
        current,
        StoreState(
            keypairs={"AK0": Keypair("AK0", secret, "u0")}, users={"u0": User("u0", "user", "d")}
        ),
        Managed(),
    )
    assert secret not in repr(changes)
    assert "AK0" in repr(changes)


@pytest.mark.parametrize(
    ("total", "gone", "refused"), [(1, 1, False), (2, 1, False), (4, 3, False), (5, 4, True)]
)
def test_a_few_keypairs_may_always_go_whatever_their_share(
    total: int, gone: int, refused: bool
) -> None:
    """Deactivating one key of a two-key installation is half of it: an everyday change,
    which the guard must not hold back (the deactivated key would keep streaming)."""
    current = _state(_keys(total))
    shrunk = _state(_keys(total - gone))
    changes = diff(current, shrunk, _managed(current))
    if refused:
        with pytest.raises(SyncRefused):
            check_removals(changes, current, max_removal_share=0.5)
    else:
        check_removals(changes, current, max_removal_share=0.5)


@pytest.mark.parametrize("wrong", ["secrets", "roles", "domains"])
def test_a_wrong_database_that_rekeys_or_rerolesis_everyone_is_refused(wrong: str) -> None:
    """A restored staging copy (other secrets everywhere) or a mass demotion or promotion
    locks everyone out or widens everyone's rights at once: refused like a truncation (the
    review found the guard counted only removals)."""
    current = _state(
        _keys(10, user="u0") | {f"BK{i}": Keypair(f"BK{i}", "s" * 16, f"v{i}") for i in range(10)}
    )
    current = StoreState(
        keypairs=current.keypairs,
        users={**current.users, **{f"v{i}": User(f"v{i}", "user", "d0") for i in range(10)}},
    )
    if wrong == "secrets":
        keypairs = {ak: Keypair(ak, "z" * 16, kp.user_id) for ak, kp in current.keypairs.items()}
        desired = StoreState(keypairs=keypairs, users=current.users)
    else:
        role, domain = ("monitor", "d0") if wrong == "roles" else ("user", "d1")
        users = {uid: User(uid, role, domain) for uid in current.users}
        desired = StoreState(keypairs=current.keypairs, users=users)
    changes = diff(current, desired, _managed(current))
    assert changes.removed_share(current) == 1.0
    with pytest.raises(SyncRefused, match="change the secret, owner, role or domain of 20 more"):
        check_removals(changes, current, max_removal_share=0.5)
