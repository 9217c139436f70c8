"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Playwright's pip wheel brings its driver; the browser is the system's (``scripts/install
--with-browser`` installs it), so nothing is downloaded at test time.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import httpx
import pytest
import redis
from playwright.sync_api import Browser, Page, expect, sync_playwright

from devtools.cluster import LocalCluster
from gateway.settings import Settings
from publisher import Keys, SessionRef, SyncPublisher
from publisher.demo import demo_identities
from tests.support.gateway_server import gateway_settings, run_gateway
from tests.support.identities import (
    ALICE,
    ALICE_PASSWORD,
    BOB,
    seed,
    session_of,
)


def _chromium() -> str | None:
    found = shutil.which("chromium")
    if found is None and os.access("/usr/bin/chromium", os.X_OK):
        found = "/usr/bin/chromium"
    return found


CHROMIUM = _chromium()
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # tests/artifacts (ignored)
WAIT_MS = 20_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="chromium is not installed (scripts/install --with-browser installs it)",
    ),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM is not None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    try:
        yield page
    finally:
        context.close()
    assert script_errors == []


def _screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def _sign_in_with_keypair(page: Page, access_key: str, secret_key: str) -> None:
    page.fill("#access-key", access_key)
    page.fill("#secret-key", secret_key)
    page.click("#login-submit")


def _connection(page: Page, state: str) -> None:
    expect(page.locator("#conn-state")).to_have_attribute("data-state", state, timeout=WAIT_MS)


def _row(page: Page, session_id: str) -> str:
    return f'#sessions tbody tr[data-session="{session_id}"]'


def _timeline_ids(page: Page) -> list[str]:
    ids: list[str] = page.eval_on_selector_all(
        "#timeline > li", "els => els.map(e => e.dataset.id)"
    )
    return ids


def _in_thread(func: Callable[[str], Awaitable[None]], redis_url: str) -> None:
    # Playwright's sync API keeps an event loop in this thread: run async setup elsewhere.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(anyio.run, func, redis_url).result()


def test_dashboard_shows_live_events_and_resumes_after_a_gateway_restart(
    page: Page, redis_url: str
) -> None:
    _in_thread(seed, redis_url)
    settings = gateway_settings(redis_url, retry_ms=500, drain_deadline=2)
    ml, other, bobs = (
        session_of(ALICE, "train-ml-1", group="ml"),
        session_of(ALICE, "notebook-1", group="default"),
        session_of(BOB, "bob-ml-1", group="ml"),
    )
    with contextlib.ExitStack() as first_run, SyncPublisher.from_url(redis_url) as pub:
        gw = first_run.enter_context(run_gateway(settings))
        page.goto(gw.base_url + "/")
        expect(page.locator("#login-view")).to_be_visible()
        expect(page.locator("#access-key")).to_be_focused()

        # a wrong secret: a plain refusal, and no way in
        _sign_in_with_keypair(page, ALICE.access_key, "not-the-secret-of-alice")
        expect(page.locator("#login-error")).to_have_text(
            "Sign-in failed: these credentials were not accepted."
        )
        expect(page.locator("#dashboard-view")).to_be_hidden()

        _sign_in_with_keypair(page, ALICE.access_key, ALICE.secret_key)
        expect(page.locator("#dashboard-view")).to_be_visible()
        expect(page.locator("#who-text")).to_contain_text("alice · user of default")
        _connection(page, "live")

        page.fill("#f-group", "ml")
        page.click("#filter-apply")
        expect(page).to_have_url(gw.base_url + "/?group=ml")
        _connection(page, "live")

        first_ids = pub.publish_many(
            [ml.enqueued(), other.started(), bobs.started(), ml.preparing(), ml.started()]
        )
        expect(page.locator(_row(page, "train-ml-1"))).to_have_attribute(
            "data-state", "kernel_started"
        )
        expect(page.locator("#timeline > li")).to_have_count(3)
        expect(page.locator("#sessions tbody tr")).to_have_count(1)  # not bob's, not group default
        expect(page.locator("#conn-last-id")).to_have_text(first_ids[-1])
        row = page.locator(_row(page, "train-ml-1"))
        expect(row.locator("td").nth(1)).to_have_text(ALICE.access_key)
        expect(row.locator("td").nth(2)).to_have_text("started")
        _screenshot(page, "dashboard-live.png")

        first_run.close()  # the replica goes away: server_close, then nothing listens

    with SyncPublisher.from_url(redis_url) as pub:
        _connection(page, "reconnecting")
        expect(page.locator("#notices")).to_contain_text("The server closed the stream (shutdown)")
        during = pub.publish_many(
            [ml.terminating("user-requested"), ml.terminated("user-requested", "SUCCESS")]
        )
        _screenshot(page, "dashboard-reconnecting.png")

        with run_gateway(settings):
            _connection(page, "live")
            after = pub.publish(session_of(ALICE, "train-ml-2", group="ml").started())
            expect(page.locator(_row(page, "train-ml-2"))).to_have_attribute(
                "data-state", "kernel_started"
            )
            expect(page.locator("#timeline > li")).to_have_count(6)
            row = page.locator(_row(page, "train-ml-1"))
            expect(row).to_have_attribute("data-state", "kernel_terminated")
            expect(row.locator("td").nth(4)).to_have_text("SUCCESS")
            expect(row.locator("td").nth(3)).to_have_text("user-requested")
            # every event once, newest first, the outage's ones replayed in between
            mine = [first_ids[0], first_ids[3], first_ids[4], *during, after]
            assert _timeline_ids(page) == mine[::-1]
            expect(page.locator("#conn-last-id")).to_have_text(after)
            assert int(page.inner_text("#conn-reconnects")) >= 1
            expect(page.locator("#notices")).to_contain_text("Reconnected; resumed after")
            _screenshot(page, "dashboard-reconnected.png")

            page.click("#logout")
            expect(page.locator("#login-view")).to_be_visible()
            expect(page.locator("#login-info")).to_have_text("You have signed out.")
            status = page.evaluate("fetch('/auth/me').then(r => r.status)")
            assert status == 401


def test_sign_in_with_user_password_and_session_end(page: Page, redis_url: str) -> None:
    _in_thread(functools.partial(seed, password=True), redis_url)
    settings = gateway_settings(redis_url, retry_ms=300)
    with run_gateway(settings) as gw:
        page.goto(gw.base_url + "/dashboard")
        page.check('input[name="method"][value="password"]')
        expect(page.locator("#keypair-fields")).to_be_hidden()
        page.fill("#user-id", "alice")
        page.fill("#password", ALICE_PASSWORD)
        _screenshot(page, "dashboard-login.png")
        page.press("#password", "Enter")
        expect(page.locator("#who-text")).to_contain_text(ALICE.access_key)
        _connection(page, "live")
        # a reload keeps the session (the cookie), and the filters (the URL)
        page.fill("#f-session", "train-ml-1")
        page.click("#filter-apply")
        page.reload()
        expect(page.locator("#f-session")).to_have_value("train-ml-1")
        _connection(page, "live")

        # the session is removed server-side: the next reconnect finds out and asks to sign in
        with redis.Redis.from_url(redis_url) as client:
            for key in client.scan_iter(Keys().browser_session("*")):
                client.delete(key)
        loop = gw.state.loop
        assert loop is not None
        loop.call_soon_threadsafe(gw.state.hub.close_all, "shutdown")
        expect(page.locator("#login-view")).to_be_visible()
        expect(page.locator("#login-info")).to_have_text("Your session has ended; sign in again.")


def test_dashboard_tells_when_history_no_longer_holds_the_gap(page: Page, redis_url: str) -> None:
    _in_thread(seed, redis_url)
    settings = gateway_settings(redis_url, retry_ms=300)
    ref = session_of(ALICE, "long-gap")
    with SyncPublisher.from_url(redis_url) as pub, redis.Redis.from_url(redis_url) as client:
        with run_gateway(settings) as gw:
            page.goto(gw.base_url + "/")
            _sign_in_with_keypair(page, ALICE.access_key, ALICE.secret_key)
            _connection(page, "live")
            seen = pub.publish(ref.enqueued())
            expect(page.locator("#conn-last-id")).to_have_text(seen)
        _connection(page, "reconnecting")
        # while the page is away, more happens than history keeps
        missed = pub.publish_many([ref.preparing(), ref.creating(), ref.started()])
        client.xtrim(Keys().history, maxlen=1, approximate=False)
        with run_gateway(settings):
            _connection(page, "live")
            expect(page.locator("#notices")).to_contain_text(
                f"Some events were missed: history no longer holds everything after {seen}"
            )
            expect(page.locator("#conn-last-id")).to_have_text(missed[-1])
            expect(page.locator(_row(page, "long-gap"))).to_have_attribute(
                "data-state", "kernel_started"
            )
            _screenshot(page, "dashboard-history-truncated.png")


# -- through the local cluster (nginx in front of replicas) ------------------------------------


def _streams(url: str) -> int:
    try:
        count: int = httpx.get(url + "/ready", timeout=2).json()["streams"]
    except httpx.HTTPError:
        return 0
    return count


@pytest.mark.skipif(not LocalCluster().use_nginx, reason="nginx is not installed")
def test_dashboard_behind_nginx_keeps_receiving_when_its_replica_is_killed(page: Page) -> None:
    root = demo_identities().keypairs[0]
    settings = Settings.load({}, probe_interval=0.5, retry_ms=500, drain_deadline=3)
    with LocalCluster(replicas=2, settings=settings) as cluster:
        ref = SessionRef(
            session_id="vision-1",
            owner_access_key="AKIARESEARCHUSER0001",
            owner_user_id="alice@research.example",
            domain="research",
            group="vision",
        )
        page.goto(cluster.url + "/")
        _sign_in_with_keypair(page, root.access_key, root.secret_key)
        expect(page.locator("#who-text")).to_contain_text("superadmin")
        page.fill("#f-group", "vision")
        page.click("#filter-apply")
        _connection(page, "live")
        with SyncPublisher.from_url(cluster.redis_url) as pub:
            pub.publish_many([ref.enqueued(), ref.started()])
            expect(page.locator("#timeline > li")).to_have_count(2)

            serving = [i for i, url in enumerate(cluster.replica_urls) if _streams(url) == 1]
            assert len(serving) == 1, "the page's stream is on exactly one replica"
            cluster.kill(serving[0])  # SIGKILL: no server_close, the connection just drops
            pub.publish(ref.terminating("idle-timeout"))  # while the page is cut off
            survivor = cluster.replica_urls[1 - serving[0]]
            expect(page.locator("#timeline > li")).to_have_count(3)  # resumed via the survivor
            _connection(page, "live")
            assert _streams(survivor) == 1
            last = pub.publish(ref.terminated("idle-timeout", "SUCCESS"))
            expect(page.locator("#conn-last-id")).to_have_text(last)
            expect(page.locator(_row(page, "vision-1"))).to_have_attribute(
                "data-state", "kernel_terminated"
            )
            expect(page.locator("#timeline > li")).to_have_count(4)
            assert int(page.inner_text("#conn-reconnects")) >= 1
            _screenshot(page, "dashboard-cluster.png")
