"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Playwright's pip wheel brings its driver; the browser is the system's (``scripts/install
--with-browser`` installs it), so nothing is downloaded at test time.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import struct
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import httpx
import pytest
import redis
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from devtools.cluster import LocalCluster
from gateway.settings import Settings
from publisher import KernelEvent, Keys, SessionRef, SyncPublisher
from publisher.demo import demo_identities
from tests.support.gateway_server import gateway_settings, run_gateway
from tests.support.identities import (
    ALICE,
    ALICE_PASSWORD,
    BOB,
    ROOT,
    Person,
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


def _publish_one(pub: SyncPublisher, event: KernelEvent) -> str:
    stream_id = pub.publish(event)
    assert stream_id is not None, "Redis is up: nothing is buffered"
    return stream_id


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
            after = _publish_one(pub, session_of(ALICE, "train-ml-2", group="ml").started())
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
    page.clock.install()  # the notice expires on a timer: jump ahead instead of waiting
    with SyncPublisher.from_url(redis_url) as pub, redis.Redis.from_url(redis_url) as client:
        with run_gateway(settings) as gw:
            page.goto(gw.base_url + "/")
            _sign_in_with_keypair(page, ALICE.access_key, ALICE.secret_key)
            _connection(page, "live")
            seen = _publish_one(pub, ref.enqueued())
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
            # a gap is told, not kept forever: a minute on, the notices are gone
            page.clock.fast_forward(61_000)
            expect(page.locator("#notices > li")).to_have_count(0)
            expect(page.locator(_row(page, "long-gap"))).to_be_visible()


# -- layout at three widths, reload, notices, refused filters, type/owner filters -------------

# Every problem that makes a column clip or the page scroll sideways: the page or a box wider
# than its room, a cell's content poking out of its cell, text cut without its tooltip.
OVERFLOW_JS = """() => {
  const problems = [];
  const shown = (el) => el.getClientRects().length > 0;
  const root = document.scrollingElement;
  if (root.scrollWidth > innerWidth) problems.push(`page: ${root.scrollWidth} > ${innerWidth}`);
  for (const box of document.querySelectorAll(".card, .topbar, .table-wrap, .timeline, main")) {
    if (shown(box) && box.scrollWidth > box.clientWidth + 1) {
      const name = box.className || box.tagName;
      problems.push(`${name} scrolls: ${box.scrollWidth} > ${box.clientWidth}`);
    }
  }
  const cells = "#sessions th, #sessions td, #timeline > li, #state-counts li, .conn div, .field";
  for (const cell of document.querySelectorAll(cells)) {
    if (!shown(cell)) continue;
    const room = cell.getBoundingClientRect();
    if (room.left < -0.5 || room.right > innerWidth + 0.5) {
      problems.push(`${cell.tagName}.${cell.className} outside the page`);
    }
    for (const part of cell.querySelectorAll("*")) {
      if (!shown(part)) continue;
      const what = `${part.tagName}.${part.className} "${part.textContent}"`;
      const box = part.getBoundingClientRect();
      if (box.left < room.left - 0.5 || box.right > room.right + 0.5) {
        problems.push(`${what} pokes out of its cell`);
      }
      const clipped = part.scrollWidth > part.clientWidth + 1;
      const hidden = getComputedStyle(part).overflowX === "hidden";
      if (clipped && (!hidden || part.title !== part.textContent)) {
        problems.push(`${what} cut without a tooltip`);
      }
    }
  }
  return problems;
}"""

LONG_SESSION = "distributed-training-" + "x" * 39 + "-999"  # 64 characters, the longest slug
LONG_REASON = "out of memory on agent gpu-node-17 " + "while-allocating-" * 6 + "buffers"


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def _sign_in(page: Page, base_url: str, person: Person = ALICE) -> None:
    page.goto(base_url + "/")
    _sign_in_with_keypair(page, person.access_key, person.secret_key)
    _connection(page, "live")


def _visible_count(page: Page, selector: str) -> int:
    count: int = page.eval_on_selector_all(selector, "els => els.filter(e => !e.hidden).length")
    return count


@pytest.mark.parametrize("width", [420, 1024, 1920])
def test_dashboard_fits_every_width_without_clipping(
    browser: Browser, redis_url: str, width: int
) -> None:
    _in_thread(seed, redis_url)
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    long_one = session_of(ALICE, LONG_SESSION, group="ml")
    refs = [session_of(BOB if i % 2 else ALICE, f"train-{i:05d}-9f2c1d") for i in range(6)]
    try:
        with (
            run_gateway(gateway_settings(redis_url)) as gw,
            SyncPublisher.from_url(redis_url) as pub,
        ):
            _sign_in(page, gw.base_url, ROOT)
            ids = pub.publish_many(
                [
                    long_one.enqueued(),
                    long_one.terminated(LONG_REASON, "FAILURE"),
                    *(ref.enqueued() for ref in refs),
                    refs[0].terminating("user-requested"),
                    refs[1].started(),
                    refs[2].cancelled("quota-exceeded"),
                    refs[3].terminated("idle-timeout", "UNDEFINED"),
                ]
            )
            expect(page.locator("#conn-last-id")).to_have_text(ids[-1])
            expect(page.locator("#sessions tbody tr")).to_have_count(7)
            cut = page.locator(f"{_row(page, LONG_SESSION)} td.c-session .cut")
            expect(cut).to_have_attribute("title", LONG_SESSION)
            td_display = page.eval_on_selector(
                "#sessions tbody td", "td => getComputedStyle(td).display"
            )
            assert td_display == ("grid" if width < 760 else "table-cell")  # stacked when narrow
            problems: list[str] = page.evaluate(OVERFLOW_JS)
            assert problems == [], "\n".join(problems)
            shot = ARTIFACTS / f"dashboard-{width}.png"
            _screenshot(page, shot.name)
            shot_width, shot_height = _png_size(shot)
            assert shot_width == width  # a full-page shot grows sideways with any overflow
            assert shot_height >= 900
    finally:
        context.close()
    assert errors == []


def test_a_reload_resumes_after_the_last_event_it_showed(page: Page, redis_url: str) -> None:
    _in_thread(seed, redis_url)
    ref, other = session_of(ALICE, "reload-1"), session_of(ALICE, "reload-2")
    with run_gateway(gateway_settings(redis_url)) as gw, SyncPublisher.from_url(redis_url) as pub:
        _sign_in(page, gw.base_url)
        page.select_option("#f-type", "")  # the form as a person leaves it
        before = pub.publish_many([ref.enqueued(), ref.preparing(), other.enqueued()])
        expect(page.locator("#conn-last-id")).to_have_text(before[-1])

        # Hold the new page's script: the old page is gone and the new one not yet listening
        # while more events are published.
        held: list[Route] = []
        page.route("**/static/dashboard.js", lambda route: held.append(route))
        page.reload(wait_until="commit")
        for _ in range(200):
            if held:
                break
            page.wait_for_timeout(50)
        assert held, "the reloaded page never asked for its script"
        during = pub.publish_many([ref.started(), other.preparing()])
        held[0].continue_()
        page.unroute("**/static/dashboard.js")

        _connection(page, "live")
        expect(page.locator("#conn-last-id")).to_have_text(during[-1])
        expect(page.locator("#notices")).to_contain_text(
            f"Resumed where this tab left off, after {before[-1]}"
        )
        after = _publish_one(pub, ref.terminating("user-requested"))
        expect(page.locator("#conn-last-id")).to_have_text(after)
        # every event once, newest first: kept ones, the reload's, then the live one
        assert _timeline_ids(page) == [after, *during[::-1], *before[::-1]]
        expect(page.locator("#conn-count")).to_have_text("6")
        expect(page.locator(_row(page, "reload-1"))).to_have_attribute(
            "data-state", "kernel_terminating"
        )
        expect(page.locator(_row(page, "reload-2"))).to_have_attribute(
            "data-state", "kernel_preparing"
        )
        assert page.inner_text("#conn-reconnects") == "0"  # a reload is not a reconnect
        page.wait_for_function(  # kept within SAVE_MS of the last event shown
            "id => JSON.parse(sessionStorage.getItem('kev-dashboard')).lastEventId === id",
            arg=after,
        )
        kept = json.loads(page.evaluate("sessionStorage.getItem('kev-dashboard')"))
        assert kept["lastEventId"] == after and len(kept["timeline"]) == 6

        # other filters are another view: they start empty, and so does a signed-out tab
        page.fill("#f-session", "reload-2")
        page.click("#filter-apply")
        _connection(page, "live")
        expect(page.locator("#timeline > li")).to_have_count(0)
        page.click("#logout")
        expect(page.locator("#login-view")).to_be_visible()
        assert page.evaluate("sessionStorage.getItem('kev-dashboard')") is None


def test_notices_clear_when_their_condition_is_over(page: Page, redis_url: str) -> None:
    _in_thread(seed, redis_url)
    page.clock.install()  # notices expire on timers: jump ahead instead of waiting
    ref = session_of(ALICE, "notice-1")
    settings = gateway_settings(redis_url, retry_ms=300)
    with run_gateway(settings) as gw, SyncPublisher.from_url(redis_url) as pub:
        _sign_in(page, gw.base_url)
        pub.publish(ref.enqueued())
        expect(page.locator("#timeline > li")).to_have_count(1)
        loop = gw.state.loop
        assert loop is not None
        loop.call_soon_threadsafe(gw.state.hub.close_all, "shutdown")
        # the browser reconnects by itself; the "reconnecting" notice goes once it is back
        expect(page.locator("#notices")).to_contain_text("Reconnected; resumed after")
        _connection(page, "live")
        expect(page.locator("#notices")).not_to_contain_text("The server closed the stream")
        expect(page.locator("#notices > li")).to_have_count(1)
        page.clock.fast_forward(11_000)
        expect(page.locator("#notices > li")).to_have_count(0)
        assert int(page.inner_text("#conn-reconnects")) == 1


def test_a_refused_filter_is_an_error_not_a_reconnect(page: Page, redis_url: str) -> None:
    _in_thread(seed, redis_url)
    settings = gateway_settings(redis_url, retry_ms=300)
    stream_requests: list[str] = []
    page.on(
        "request",
        lambda request: stream_requests.append(request.url) if "/stream/" in request.url else None,
    )
    with run_gateway(settings) as gw, SyncPublisher.from_url(redis_url) as pub:
        _sign_in(page, gw.base_url)
        page.fill("#f-owner", BOB.access_key)  # a user may ask for its own sessions only
        page.click("#filter-apply")
        _connection(page, "refused")
        error = page.locator("#stream-error")
        expect(error).to_be_visible()
        expect(error).to_contain_text("The gateway refused these filters (HTTP 403)")
        expect(page.locator("#conn-state")).to_have_text("Refused")
        asked = len(stream_requests)
        page.wait_for_timeout(1500)  # five retry intervals: nothing is retried
        assert len(stream_requests) == asked
        assert page.inner_text("#conn-reconnects") == "0"
        expect(page.locator("#notices > li")).to_have_count(0)

        page.fill("#f-owner", "")
        page.fill("#f-group", "no-such-group")
        page.click("#filter-apply")
        _connection(page, "refused")
        expect(error).to_contain_text("(HTTP 404)")
        assert page.inner_text("#conn-reconnects") == "0"

        page.fill("#f-group", "")
        page.fill("#f-owner", ALICE.access_key)
        page.click("#filter-apply")
        _connection(page, "live")
        expect(error).to_be_hidden()
        seen = _publish_one(pub, session_of(ALICE, "after-refusal").started())
        expect(page.locator("#conn-last-id")).to_have_text(seen)
        assert page.inner_text("#conn-reconnects") == "0"


def test_type_and_owner_filters_and_per_state_counts(page: Page, redis_url: str) -> None:
    _in_thread(seed, redis_url)
    a1, a2 = session_of(ALICE, "a-1"), session_of(ALICE, "a-2")
    b1, b2 = session_of(BOB, "b-1"), session_of(BOB, "b-2")

    def count(state: str) -> str:
        return page.inner_text(f'#state-counts [data-state="{state}"] .chip-n')

    with run_gateway(gateway_settings(redis_url)) as gw, SyncPublisher.from_url(redis_url) as pub:
        _sign_in(page, gw.base_url, ROOT)
        ids = pub.publish_many(
            [
                a1.enqueued(),
                a1.preparing(),
                a2.started(),
                b1.started(),
                b1.terminated("user-requested", "SUCCESS"),
                b2.preparing(),
            ]
        )
        expect(page.locator("#conn-last-id")).to_have_text(ids[-1])
        assert (count("kernel_preparing"), count("kernel_started")) == ("2", "1")
        assert (count("kernel_terminated"), count("kernel_enqueued")) == ("1", "0")

        page.select_option("#f-type", "kernel_started")  # shown at once, no new stream
        expect(page).to_have_url(gw.base_url + "/?type=kernel_started")
        assert _visible_count(page, "#timeline > li") == 2  # a-2's and b-1's start
        assert _visible_count(page, "#sessions tbody tr") == 1  # only a-2 is running now
        expect(page.locator(_row(page, "a-2"))).to_be_visible()
        expect(page.locator("#timeline > li")).to_have_count(6)

        chip = page.locator('#state-counts [data-state="kernel_preparing"]')
        chip.click()
        expect(chip).to_have_attribute("aria-pressed", "true")
        expect(page.locator("#f-type")).to_have_value("kernel_preparing")
        assert _visible_count(page, "#sessions tbody tr") == 2  # a-1, b-2
        chip.click()
        expect(chip).to_have_attribute("aria-pressed", "false")
        assert _visible_count(page, "#sessions tbody tr") == 4

        page.fill("#f-owner", BOB.access_key)
        page.click("#filter-apply")
        expect(page).to_have_url(gw.base_url + f"/?ownerAccessKey={BOB.access_key}")
        _connection(page, "live")
        expect(page.locator("#sessions tbody tr")).to_have_count(0)
        last = pub.publish_many([a1.started(), b2.started(), b1.enqueued()])[-1]
        expect(page.locator("#conn-last-id")).to_have_text(last)
        expect(page.locator("#timeline > li")).to_have_count(2)  # bob's two, not alice's
        owners = page.eval_on_selector_all(
            "#sessions tbody tr", "rows => rows.map(r => r.dataset.owner)"
        )
        assert owners == [BOB.access_key, BOB.access_key]  # alice's a-1 is not shown
        assert (count("kernel_started"), count("kernel_enqueued")) == ("1", "1")
        assert count("kernel_preparing") == "0"


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
            last = _publish_one(pub, ref.terminated("idle-timeout", "SUCCESS"))
            expect(page.locator("#conn-last-id")).to_have_text(last)
            expect(page.locator(_row(page, "vision-1"))).to_have_attribute(
                "data-state", "kernel_terminated"
            )
            expect(page.locator("#timeline > li")).to_have_count(4)
            assert int(page.inner_text("#conn-reconnects")) >= 1
            _screenshot(page, "dashboard-cluster.png")
