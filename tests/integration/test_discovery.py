"""Backend.AI clients ask ``GET /`` for the API version before anything else (the SDKs from
20.03 on), and pick their event path by it; browsers asking ``/`` get the dashboard."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from gateway.http.discovery import NEWEST, version_for
from tests.support.gateway_server import RunningGateway


@pytest.mark.parametrize("path", ["/", "/func/"])
@pytest.mark.parametrize(
    "accept",
    [
        None,
        "*/*",
        "application/json",
        "application/json, text/html",  # a tie goes to the API
        "text/html;q=0.1, application/json",
    ],
)
def test_api_clients_get_the_managers_version_json(
    gateway: RunningGateway, path: str, accept: str | None
) -> None:
    # no signature: the SDKs ask before they sign anything, as the manager allows
    headers = {} if accept is None else {"Accept": accept}
    response = httpx.get(gateway.base_url + path, headers=headers, timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["version"] == NEWEST  # a client that names no SDK release: the newest
    assert body["manager"].startswith("kernel-event-gateway ")


def test_browsers_still_get_the_dashboard_at_the_root(gateway: RunningGateway) -> None:
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    response = httpx.get(gateway.base_url + "/", headers=html, timeout=5)
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["vary"] == "Accept, User-Agent"
    assert httpx.get(gateway.base_url + "/dashboard", timeout=5).status_code == 200


def test_the_reported_version_is_a_setting(
    cast: str, start_gateway: Callable[..., RunningGateway]
) -> None:
    gw = start_gateway(api_version="v6.20200815")
    assert httpx.get(gw.base_url + "/", timeout=5).json()["version"] == "v6.20200815"


@pytest.mark.parametrize(
    ("release", "speaks", "minimum"),
    [  # each generation's API_VERSION and MIN_API_VERSION, as its config.py has them
        ("19.09.10", "v4.20190615", None),
        ("20.03.10", "v5.20191215", None),
        ("20.09.0", "v6.20200815", None),
        ("20.09.9", "v6.20210815", None),
        ("21.03.2", "v6.20200815", None),
        ("21.09.5", "v6.20210815", "v5.20191215"),
        ("22.03.0", "v6.20220315", "v5.20191215"),
        ("22.03.2", "v6.20220315", "v5.20191215"),
        ("22.03.9", "v6.20220615", "v5.20191215"),
        ("22.09.0", "v6.20220615", "v5.20191215"),
        ("23.03.0", "v6.20230315", "v5.20191215"),
        ("23.03.5", "v7.20230615", "v5.20191215"),
        ("23.9.10", "v7.20230615", "v5.20191215"),
        ("24.03.0", "v8.20240315", "v7.20230615"),
        ("24.9.14", "v8.20240915", "v7.20230615"),
        ("25.11.0", "v8.20240915", "v7.20230615"),
        ("25.19.2", "v9.20250722", "v7.20230615"),
        ("26.9.6", "v9.20250722", "v7.20230615"),
        ("31.1.0", "v9.20250722", "v7.20230615"),  # newer than any known: the newest
    ],
)
def test_every_sdk_generation_is_answered_a_version_it_does_not_warn_about(
    gateway: RunningGateway, release: str, speaks: str, minimum: str | None
) -> None:
    """The SDK warns when the server is newer than its API_VERSION or older than its
    MIN_API_VERSION; ``auto`` answers each release a version between the two."""
    agent = {"User-Agent": f"Backend.AI Client for Python {release}"}
    reported = httpx.get(gateway.base_url + "/", headers=agent, timeout=5).json()["version"]

    def key(v: str) -> tuple[int, str]:
        major, date = v[1:].split(".")
        return int(major), date

    assert key(reported) <= key(speaks)
    assert minimum is None or key(reported) >= key(minimum)
    assert reported == version_for(agent["User-Agent"])


def test_there_is_never_an_announcement(gateway: RunningGateway) -> None:
    # SDKs 19.09-20.09 ask once before streaming and carry on without one
    response = httpx.get(gateway.base_url + "/manager/announcement", timeout=5)
    assert response.json() == {"enabled": False, "message": ""}
