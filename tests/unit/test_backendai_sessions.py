"""Backend.AI's console sessions, the parts without I/O (gateway/identity/backendai_sessions.py):
which ids are read at all, what a stored value says, the setting (end to end:
tests/integration/test_backendai_sessions.py)."""

from __future__ import annotations

import json
import uuid

import pytest

from gateway.identity.backendai_sessions import (
    BackendAICookieCredential,
    ConsoleSession,
    decode_console_session,
    valid_session_id,
)
from gateway.identity.models import Identity
from gateway.settings import Settings, SettingsError


def test_only_the_web_servers_id_shape_is_read() -> None:
    assert valid_session_id(uuid.uuid4().hex)
    for value in ("", "*", uuid.uuid4().hex.upper(), str(uuid.uuid4()), "a" * 31, "a" * 33,
                  "a" * 32 + "\n", "AIOHTTP_SESSION_" + "a" * 32):  # fmt: skip
        assert not valid_session_id(value), value


def _value(**session: object) -> bytes:
    return json.dumps({"created": 1_700_000_000, "session": session}).encode()


TOKEN = {"type": "keypair", "access_key": "AKIA1", "secret_key": "s", "role": "superadmin"}


def test_a_logged_in_session_names_its_keypair() -> None:
    stored = decode_console_session(_value(authenticated=True, token=TOKEN, other={"x": 1}))
    assert stored is not None
    token = stored.keypair()
    assert token is not None and (token.access_key, token.secret_key) == ("AKIA1", "s")


@pytest.mark.parametrize(
    "raw",
    [
        b"{}",  # a logout
        _value(authenticated=False, token=TOKEN),
        _value(token=TOKEN),
        _value(authenticated=True),
        _value(authenticated=True, token={**TOKEN, "type": "jwt"}),
        _value(authenticated=True, token={**TOKEN, "access_key": ""}),
        _value(authenticated=True, token={**TOKEN, "secret_key": ""}),
    ],
)
def test_anything_else_names_none(raw: bytes) -> None:
    stored = decode_console_session(raw)
    assert stored is not None and stored.keypair() is None


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'"x"', _value(authenticated="yes")])
def test_a_value_that_is_no_session_does_not_decode(raw: bytes) -> None:
    assert decode_console_session(raw) is None


def test_expiration_follows_the_web_servers_rule() -> None:
    def stored(created: int, end: int | None) -> ConsoleSession:
        data = {"created": created, "session": {}} | ({"expiration_dt": end} if end else {})
        decoded = decode_console_session(json.dumps(data).encode())
        assert decoded is not None
        return decoded

    assert not stored(100, None).expired(10**10)  # 23.09: no end but the key's TTL
    assert not stored(100, 200).expired(200)
    assert stored(100, 200).expired(201)
    # created after its end: the web server starts a new lifetime (Session.__init__, 26.8.1)
    assert not stored(300, 200).expired(301)


def test_the_credential_never_shows_the_session_key() -> None:
    secret_id = uuid.uuid4().hex
    credential = BackendAICookieCredential(
        Identity("AKIA1", "alice", "user", "default"), key="AIOHTTP_SESSION_" + secret_id
    )
    assert secret_id not in repr(credential)
    assert credential.resumes and credential.method == "backendai_cookie"


def test_the_setting_is_off_by_default_checked_and_redacted() -> None:
    assert Settings.load({}).identity.backendai_sessions == ""
    url = "redis://kev-backendai-sessions:hunter2-very-secret@web-redis:6379"
    settings = Settings.load({"GATEWAY_BACKENDAI_SESSIONS": url})
    assert settings.identity.backendai_sessions == url
    assert "hunter2-very-secret" not in repr(settings)
    with pytest.raises(SettingsError, match=r"GATEWAY_BACKENDAI_SESSIONS \(--backendai-sessions\)"):
        Settings.load({"GATEWAY_BACKENDAI_SESSIONS": "http://web-redis:6379"})
