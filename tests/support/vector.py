"""The signed request of docs/design.md §4: its inputs, its signature, and its headers."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.identity.signing import sign_request

__all__ = [
    "ACCESS_KEY",
    "DATE",
    "HOST",
    "NOW",
    "SECRET",
    "SIGNATURE",
    "TARGET",
    "VERSION",
    "signed",
    "vector_headers",
]

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
TARGET = "/stream/kernel/_/events?sessionId=mysession-01&group=*"
DATE = "2019-10-07T12:34:56+00:00"
HOST = "127.0.0.1:8081"
VERSION = "v4.20190615"
SIGNATURE = "da0d0056beb4162ea3aa354dcbe67bb45eb4e06146482897bb11c653f6011361"
#: the server's clock for the vector: five minutes after its date
NOW = datetime(2019, 10, 7, 12, 40, tzinfo=UTC)


def vector_headers(**changes: str | None) -> dict[str, str]:
    """The vector's request headers (lower case); a change of ``None`` removes one, and
    ``x_backendai_date`` names ``x-backendai-date``."""
    headers = {
        "authorization": f"BackendAI signMethod=HMAC-SHA256, credential={ACCESS_KEY}:{SIGNATURE}",
        "date": DATE,
        "host": HOST,
        "x-backendai-version": VERSION,
    }
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return headers


def signed(date: str, *, access_key: str = ACCESS_KEY, secret: str = SECRET) -> str:
    """The vector's Authorization header for another date, key or secret."""
    return sign_request("GET", TARGET, date, HOST, None, VERSION, access_key, secret)
