"""Password hashes (scrypt) and the identity records' reprs, which must never show a secret."""

from __future__ import annotations

import pytest

from gateway.identity.models import Keypair, User
from gateway.identity.passwords import hash_password, verify_password
from tests.support.vector import SECRET

D32 = "A" * 43 + "="  # 32 bytes of base64


def test_password_hash_round_trip() -> None:
    hashed = hash_password("correct horse")
    assert hashed.startswith("scrypt$16384$8$1$")
    assert hashed != hash_password("correct horse")  # salted
    assert verify_password("correct horse", hashed)
    assert not verify_password("correct horsf", hashed)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "plain",
        "md5$1$2$3$AAAA$AAAA",
        "scrypt$x$8$1$AAAA$AAAA",
        f"scrypt$16384$8$1$!!${D32}",
        "scrypt$16384$8$1$AAAA$AAAA",  # digest too short
        f"scrypt$1000$8$1$AAAA${D32}",  # n not 2**k
        f"scrypt$1073741824$8$1$AAAA${D32}",  # too much memory
    ],
)
def test_malformed_password_hashes_do_not_verify(bad: str) -> None:
    assert not verify_password("anything", bad)


def test_reprs_hide_secrets() -> None:
    text = repr(Keypair("AKIA1", SECRET, "u")) + repr(User("u", "user", "d", hash_password("p")))
    assert SECRET not in text and "scrypt" not in text
    assert "AKIA1" in text
