"""Backend.AI's web server's console sessions, written as it writes them (its source:
``src/ai/backend/common/web/session/redis_storage.py`` ``save_session`` and
``__init__.py`` ``_get_session_data``, ``src/ai/backend/web/server.py`` ``login_handler``,
23.09.0 and 26.8.1): ``SET AIOHTTP_SESSION_<uuid4().hex> json.dumps(...) EX max_age``."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

import redis

from tests.support.identities import Person

__all__ = ["MAX_AGE", "Generation", "login_value", "logout_value", "store_session"]

#: the web server's ``session.max_age`` default (a week), the key's TTL
MAX_AGE = 604800
#: 23.09: ``{"created", "session"}``; 26.8 (24.09 on): also ``expiration_dt``
Generation = Literal["23.09", "26.8"]


def login_value(
    person: Person,
    *,
    generation: Generation = "26.8",
    role: str | None = None,
    secret_key: str | None = None,
    logged_in_ago: float = 0,
    lifetime: float = MAX_AGE,
) -> str:
    """A logged-in session's value: the mapping ``login_handler`` fills (``authenticated``,
    then the full ``token``), under ``created`` (and ``expiration_dt``: ``lifetime`` after
    it, the web server's ``login_session_extension_sec``)."""
    created = int(time.time() - logged_in_ago)
    token = {
        "type": "keypair",
        "access_key": person.access_key,
        "secret_key": secret_key if secret_key is not None else person.secret_key,
        "role": role if role is not None else person.role,
        "status": "active",
    }
    data: dict[str, Any] = {"created": created, "session": {"authenticated": True, "token": token}}
    if generation == "26.8":
        data["expiration_dt"] = int(created + lifetime)
    return json.dumps(data)


def logout_value() -> str:
    """What a logout leaves (``session.invalidate()`` then ``save_session``: empty data)."""
    return json.dumps({})


def store_session(client: redis.Redis, value: str, session_id: str | None = None) -> str:
    """Store ``value`` as the web server does; returns the session id (the cookie's value)."""
    session_id = session_id or uuid.uuid4().hex
    client.set(f"AIOHTTP_SESSION_{session_id}", value, ex=MAX_AGE)
    return session_id
