"""The cast the gateway tests use: two domains, users, admins, a superadmin, a monitor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.identity.store import IdentityStore
from publisher.connection import connect_async
from publisher.keys import Keys
from publisher.schema import SessionRef


@dataclass(frozen=True)
class Person:
    user_id: str
    role: str
    domain: str
    access_key: str
    secret_key: str


def _person(user_id: str, role: str, domain: str) -> Person:
    tag = user_id.upper().replace("-", "")
    return Person(user_id, role, domain, f"AKIA{tag:0<16}"[:20], f"secret-{user_id}-" + "x" * 30)


ALICE = _person("alice", "user", "default")
BOB = _person("bob", "user", "default")
CAROL = _person("carol", "user", "research")
DAVE = _person("dave", "admin", "default")
ERIN = _person("erin", "admin", "research")
ROOT = _person("root", "superadmin", "default")
MONI = _person("moni", "monitor", "default")
PEOPLE = (ALICE, BOB, CAROL, DAVE, ERIN, ROOT, MONI)
#: a second keypair of alice's, and an inactive one of bob's
ALICE2 = Person("alice", "user", "default", "AKIAALICESECOND00000", "secret-alice-2-" + "y" * 30)
BOB_OFF = Person("bob", "user", "default", "AKIABOBINACTIVE00000", "secret-bob-off-" + "z" * 30)
GROUPS = (("default", "default"), ("default", "ml"), ("research", "ml"), ("research", "rteam"))


def import_doc() -> dict[str, Any]:
    return {
        "users": [{"user_id": p.user_id, "role": p.role, "domain": p.domain} for p in PEOPLE],
        "keypairs": [
            {"access_key": p.access_key, "secret_key": p.secret_key, "user_id": p.user_id}
            for p in (*PEOPLE, ALICE2)
        ]
        + [
            {
                "access_key": BOB_OFF.access_key,
                "secret_key": BOB_OFF.secret_key,
                "user_id": "bob",
                "active": False,
            }
        ],
        "groups": [{"domain": d, "name": n} for d, n in GROUPS],
    }


#: alice's browser-login password, when :func:`seed` is asked for it
ALICE_PASSWORD = "correct horse battery staple"


async def seed(redis_url: str, prefix: str = "kev", *, password: bool = False) -> None:
    """Store the cast; with ``password``, alice gets a browser-login password too (hashing it
    costs a few scrypt rounds, so only the tests that log in ask for it)."""
    doc = import_doc()
    if password:
        alice = next(u for u in doc["users"] if u["user_id"] == "alice")
        alice["password"] = ALICE_PASSWORD
    client = connect_async(redis_url)  # any topology: a cluster's names are hash-tagged
    try:
        await IdentityStore(client, Keys.for_url(redis_url, prefix)).import_data(doc)
    finally:
        await client.aclose()


def session_of(person: Person, session_id: str, group: str = "default") -> SessionRef:
    return SessionRef(
        session_id=session_id,
        owner_access_key=person.access_key,
        owner_user_id=person.user_id,
        domain=person.domain,
        group=group,
    )
