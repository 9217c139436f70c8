"""Backend.AI clients ask ``GET /`` for the API version before anything else (the SDKs from
20.03 on), and pick their event path by it; browsers asking ``/`` get the dashboard."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

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
    assert body["version"] == "v4.20190615"  # the API the stream endpoint implements
    assert body["manager"].startswith("kernel-event-gateway ")


def test_browsers_still_get_the_dashboard_at_the_root(gateway: RunningGateway) -> None:
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    response = httpx.get(gateway.base_url + "/", headers=html, timeout=5)
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["vary"] == "Accept"
    assert httpx.get(gateway.base_url + "/dashboard", timeout=5).status_code == 200


def test_the_reported_version_is_a_setting(
    cast: str, start_gateway: Callable[..., RunningGateway]
) -> None:
    gw = start_gateway(api_version="v6.20200815")
    assert httpx.get(gw.base_url + "/", timeout=5).json()["version"] == "v6.20200815"


def test_there_is_never_an_announcement(gateway: RunningGateway) -> None:
    # SDKs 19.09-20.09 ask once before streaming and carry on without one
    response = httpx.get(gateway.base_url + "/manager/announcement", timeout=5)
    assert response.json() == {"enabled": False, "message": ""}
