"""The stock web UI's way of streaming, in a real headless Chromium (Debian's ``chromium``,
driven by Playwright, as tests/system/test_browser.py): a page on the gateway's origin holding
Backend.AI's console-session cookie opens ``new EventSource('/func/events/session',
{withCredentials: true})`` and gets its user's events only, whatever role the session's copy
of the token claims (gateway/identity/backendai_sessions.py)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator

import pytest
import redis
from playwright.sync_api import Page, sync_playwright

from publisher import SyncPublisher
from tests.support.console_sessions import login_value, store_session
from tests.support.gateway_server import RunningGateway
from tests.support.identities import ALICE, BOB, CAROL, session_of
from tests.support.redis_server import RedisServer


def _chromium() -> str | None:
    found = shutil.which("chromium")
    if found is None and os.access("/usr/bin/chromium", os.X_OK):
        found = "/usr/bin/chromium"
    return found


CHROMIUM = _chromium()
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
WAIT_MS = 20_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="chromium is not installed (scripts/install --with-browser installs it)",
    ),
]

#: what the web UI does (its EventSource, with credentials), keeping what arrives
OPEN_JS = """(path) => {
  window.seen = [];
  window.opened = false;
  const source = new EventSource(path, { withCredentials: true });
  source.onopen = () => { window.opened = true; };
  for (const name of ["kernel_started", "kernel_terminated", "session_started"]) {
    source.addEventListener(name, (e) => window.seen.push([e.type, JSON.parse(e.data)]));
  }
  window.source = source;
}"""


@pytest.fixture
def console_page(
    cast: str, start_gateway: Callable[..., RunningGateway]
) -> Iterator[tuple[Page, RunningGateway]]:
    """A page on the gateway's origin, logged in to Backend.AI's web server as alice (whose
    session claims superadmin)."""
    assert CHROMIUM is not None
    with RedisServer() as web_redis, redis.Redis.from_url(web_redis.url) as admin:
        gateway = start_gateway(backendai_sessions=web_redis.url)
        sid = store_session(admin, login_value(ALICE, role="superadmin"))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS
            )
            try:
                context = browser.new_context()
                context.add_cookies(
                    [
                        {
                            "name": "AIOHTTP_SESSION",
                            "value": sid,
                            "url": gateway.base_url,
                            "httpOnly": True,
                        }
                    ]
                )
                page = context.new_page()
                page.set_default_timeout(WAIT_MS)
                page.goto(gateway.base_url + "/health")
                yield page, gateway
            finally:
                browser.close()


def test_eventsource_on_func_events_session_gets_its_users_events_only(
    console_page: tuple[Page, RunningGateway], cast: str
) -> None:
    page, _ = console_page
    page.evaluate(OPEN_JS, "/func/events/session")
    page.wait_for_function("window.opened === true")
    mine = session_of(ALICE, "alice-web")
    with SyncPublisher.from_url(cast) as pub:
        pub.publish_many(
            [
                session_of(BOB, "bob-web").started(),
                mine.started(),
                session_of(CAROL, "carol-web", group="ml").started(),
                mine.terminated("done", "SUCCESS"),
            ]
        )
    page.wait_for_function("window.seen.some(([name]) => name === 'kernel_terminated')")
    seen = page.evaluate("window.seen")
    page.evaluate("window.source.close()")
    assert [(name, data["sessionName"], data["ownerAccessKey"]) for name, data in seen] == [
        ("kernel_started", "alice-web", ALICE.access_key),
        ("kernel_terminated", "alice-web", ALICE.access_key),
    ], json.dumps(seen)
