"""Talking HTTP to a gateway the way the tests need to: raw signed requests, problem bodies,
Prometheus values."""

from __future__ import annotations

import re
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx

from gateway.consumer import open_stream
from gateway.identity.signing import signed_headers
from tests.support.identities import Person

__all__ = ["STREAM_PATH", "metric_value", "problem", "raw_stream_request", "stream_as"]

STREAM_PATH = "/stream/kernel/_/events"


def raw_stream_request(host: str, person: Person, target: str = STREAM_PATH) -> bytes:
    """A signed ``GET target`` as bytes for a bare socket (no client library in between)."""
    headers = signed_headers("GET", target, host, person.access_key, person.secret_key)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{head}\r\n".encode()


def stream_as(person: Person, url: str, **options: Any) -> AbstractAsyncContextManager[Any]:
    """:func:`gateway.consumer.open_stream` signed with ``person``'s keypair."""
    return open_stream(url, access_key=person.access_key, secret_key=person.secret_key, **options)


def problem(response: httpx.Response) -> tuple[int, str, str]:
    """(status, problem slug, title) of an ``application/problem+json`` answer."""
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    return response.status_code, body["type"].rsplit("/", 1)[1], body["title"]


def metric_value(text: str, name: str) -> float:
    """The value of the unlabelled sample ``name`` in a ``/metrics`` page."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{name} missing from /metrics"
    return float(match.group(1))
