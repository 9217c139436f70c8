"""The identity records the gateway stores (keypairs, users, groups), who is calling, and the
rules their names and secrets follow. Storage is :mod:`gateway.identity.store`."""

from __future__ import annotations

import unicodedata
from typing import Final, Literal, get_args

import msgspec

__all__ = [
    "MAX_NAME_LEN",
    "ROLES",
    "Group",
    "GroupEntry",
    "Identity",
    "IdentityError",
    "ImportDocument",
    "ImportSummary",
    "Keypair",
    "KeypairEntry",
    "Role",
    "UnknownIdentityError",
    "User",
    "UserEntry",
    "check_access_key",
    "check_group",
    "check_keypair",
    "check_user",
]

Role = Literal["user", "admin", "superadmin", "monitor"]
"""``admin`` is a domain admin; ``monitor`` sees everything, read only."""
ROLES: Final[frozenset[str]] = frozenset(get_args(Role))

MAX_NAME_LEN: Final = 128
MIN_SECRET_LEN: Final = 16
MAX_SECRET_LEN: Final = 256


class IdentityError(ValueError):
    """An identity that is invalid, conflicts with a stored one, or is missing; names the value."""


class UnknownIdentityError(IdentityError, LookupError):
    """A management call named a keypair, user or group that is not stored."""


class Keypair(msgspec.Struct, frozen=True):
    access_key: str
    secret_key: str
    user_id: str
    active: bool = True

    def __repr__(self) -> str:  # the secret must never reach a log line or a traceback
        return (
            f"Keypair(access_key={self.access_key!r}, secret_key='***', "
            f"user_id={self.user_id!r}, active={self.active!r})"
        )


class User(msgspec.Struct, frozen=True):
    user_id: str
    role: Role
    domain: str
    password_hash: str = ""

    def __repr__(self) -> str:
        return f"User(user_id={self.user_id!r}, role={self.role!r}, domain={self.domain!r})"


class Group(msgspec.Struct, frozen=True):
    domain: str
    name: str


class Identity(msgspec.Struct, frozen=True):
    """Who is calling: what the stream endpoint filters by."""

    access_key: str
    user_id: str
    role: Role
    domain: str


class ImportSummary(msgspec.Struct, frozen=True):
    users: int
    keypairs: int
    groups: int


# -- validation ---------------------------------------------------------------------------------


def _check_name(what: str, value: str, *, forbid: str = "", ascii_only: bool = False) -> str:
    if not value:
        raise IdentityError(f"{what} must not be empty")
    if len(value) > MAX_NAME_LEN:
        raise IdentityError(f"{what} {value[:40]!r}... is longer than {MAX_NAME_LEN} characters")
    for ch in value:
        # C*: control, format (zero-width), surrogate, private, unassigned; Z*: any space
        if unicodedata.category(ch)[0] in "CZ":
            raise IdentityError(f"{what} {value!r} contains whitespace or a control character")
        if ch in forbid:
            raise IdentityError(f"{what} {value!r} must not contain {ch!r}")
        if ascii_only and not ch.isascii():
            raise IdentityError(f"{what} {value!r} must be ASCII")
    return value


def check_access_key(value: str) -> str:
    # It travels in ``credential=<ak>:<sig>`` of an HTTP header, so ASCII and none of ``:,=``.
    return _check_name("access key", value, forbid=":,=", ascii_only=True)


def _check_secret(value: str) -> None:
    # Never echo the value: it is the secret.
    if not MIN_SECRET_LEN <= len(value) <= MAX_SECRET_LEN:
        raise IdentityError(
            f"secret key must be {MIN_SECRET_LEN}-{MAX_SECRET_LEN} characters, not {len(value)}"
        )
    if not (value.isascii() and value.isprintable()) or any(c.isspace() for c in value):
        raise IdentityError("secret key must be printable ASCII without whitespace")


def _check_domain(value: str) -> str:
    # ``:`` separates domain and name in the groups set and the group key.
    return _check_name("domain", value, forbid=":")


def check_keypair(kp: Keypair) -> None:
    check_access_key(kp.access_key)
    _check_secret(kp.secret_key)
    _check_name("user id", kp.user_id)


def check_user(user: User) -> None:
    _check_name("user id", user.user_id)
    if user.role not in ROLES:
        raise IdentityError(f"role {user.role!r} is not one of {', '.join(sorted(ROLES))}")
    _check_domain(user.domain)


def check_group(group: Group) -> None:
    _check_domain(group.domain)
    _check_name("group name", group.name)


# -- import document ----------------------------------------------------------------------------


class UserEntry(msgspec.Struct, forbid_unknown_fields=True):
    user_id: str
    role: Role
    domain: str
    password: str | None = None
    password_hash: str | None = None


class KeypairEntry(msgspec.Struct, forbid_unknown_fields=True):
    access_key: str
    secret_key: str
    user_id: str
    active: bool = True


class GroupEntry(msgspec.Struct, forbid_unknown_fields=True):
    domain: str
    name: str


class ImportDocument(msgspec.Struct, forbid_unknown_fields=True):
    """What ``gateway import`` reads (JSON): users, keypairs and groups, unknown keys refused."""

    users: list[UserEntry] = msgspec.field(default_factory=list)
    keypairs: list[KeypairEntry] = msgspec.field(default_factory=list)
    groups: list[GroupEntry] = msgspec.field(default_factory=list)
