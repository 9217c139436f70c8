"""The dashboard's files as the gateway serves them (the page itself, in Chromium:
tests/system/test_browser.py)."""

from __future__ import annotations

import re
from importlib import resources

import httpx
import pytest

from tests.support.gateway_server import RunningGateway

STATIC = resources.files("gateway.http") / "static"


@pytest.mark.parametrize(
    ("path", "file", "media_type"),
    [
        ("/", "index.html", "text/html; charset=utf-8"),
        ("/dashboard", "index.html", "text/html; charset=utf-8"),
        ("/static/dashboard.js", "dashboard.js", "text/javascript; charset=utf-8"),
        ("/static/dashboard.css", "dashboard.css", "text/css; charset=utf-8"),
    ],
)
def test_files_are_served_with_a_strict_policy(
    gateway: RunningGateway, path: str, file: str, media_type: str
) -> None:
    browser = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}  # what a browser sends
    response = httpx.get(gateway.base_url + path, headers=browser, timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert response.content == (STATIC / file).read_bytes()
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert httpx.head(gateway.base_url + path, headers=browser, timeout=5).status_code == 200


def test_the_page_needs_nothing_from_elsewhere() -> None:
    # The machine may be offline: no CDN, no web font, no external link of any kind.
    for name in ("index.html", "dashboard.js", "dashboard.css"):
        text = (STATIC / name).read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), name
        assert "@import" not in text and "url(" not in text, name
    html = (STATIC / "index.html").read_text()
    assert 'src="/static/dashboard.js"' in html and 'href="/static/dashboard.css"' in html
    assert "<script>" not in html and "style=" not in html  # the CSP forbids inline ones


def test_the_script_puts_server_text_in_as_text_only() -> None:
    # Event data (session ids, reasons, problem titles) must never be parsed as HTML.
    script = (STATIC / "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert "textContent" in script


def test_unknown_static_paths_are_404(gateway: RunningGateway) -> None:
    for path in ("/static/", "/static/../app.py", "/static/index.html", "/dashboard/x"):
        response = httpx.get(gateway.base_url + path, timeout=5)
        assert response.status_code == 404, path
