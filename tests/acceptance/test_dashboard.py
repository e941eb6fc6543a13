"""The dashboard in headless Chromium: it shows the state, and its buttons stop and start sending.

Playwright drives Debian's ``chromium`` (no browser download). Where chromium or Playwright is
missing the tests are skipped with the reason, and fail instead with
INSIDER_TEST_REQUIRE_SERVICES=1 (as CI sets). The app is served on a real local port over the
in-memory adapters, on a fake clock set to now. Set INSIDER_TEST_DASHBOARD_SCREENSHOT to a path
to keep a screenshot of the seeded dashboard there (docs/dashboard.png was made so).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from insider.adapters.memory import Request
from insider.clock import FakeClock
from insider.domain import MessageStatus, Outcome, SendResult
from tests.conftest import REQUIRE_SERVICES, eventually
from tests.unit.web_support import Api, open_api

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOT = os.environ.get("INSIDER_TEST_DASHBOARD_SCREENSHOT", "")
DLR_TOKEN = "dashboard-receipts-token"
TOKEN = "dashboard-token"
SEEDED_S = 110.0


def _unavailable(reason: str) -> None:
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason}, and INSIDER_TEST_REQUIRE_SERVICES is set", pytrace=False)
    pytest.skip(reason)


def chromium_path() -> str | None:
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    try:
        from playwright.async_api import async_playwright
    except ImportError as exc:
        _unavailable(f"Playwright is not installed ({exc}); pip install -e '.[test]'")
    path = chromium_path()
    if path is None:
        _unavailable("Debian's chromium is not installed (apt-get install -y chromium)")
    assert path is not None
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=path, args=LAUNCH_ARGS, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


def provider(request: Request) -> SendResult:
    """Refuses what says so, accepts the rest."""
    if "refused" in request.content:
        return SendResult(Outcome.FAILED, status_code=400, error='HTTP 400: {"error": "number is blocked"}')
    message_id = hashlib.sha1(request.idempotency_key.encode()).hexdigest()[:12]
    return SendResult(Outcome.SENT, status_code=202, provider_message_id=f"msg-{message_id}")


async def seed(api: Api) -> None:
    """Messages in every state: sent, failed (refused and invalid), and pending."""
    api.sms.responder = provider
    for to, content in [
        ("+905301234001", "Kargonuz yola çıktı, takip no: TR4821"),
        ("+905301234002", "Your verification code is 482113"),
        ("+905301234003", "refused: the provider does not take this one"),
        ("+905551112233", "Randevunuz yarın 14:30'da"),
        ("+44", "A recipient that is not a phone number"),
        ("+905301234004", "Hoş geldiniz! İlk siparişinize %10 indirim"),
    ]:
        api.repository.add(to, content)
        await api.clock.advance(7)
    supervisor = api.container.supervisor()
    while (await supervisor.run_once()).claimed:
        await api.clock.advance(30)
    for i in range(3):
        api.repository.add(f"+90530123410{i}", f"Kampanya hatırlatması {i + 1}")


async def open_page(browser: Browser, api: Api, **options: Any) -> tuple[Page, list[str]]:
    """A page on the dashboard; the list collects problems: console errors, failed or foreign requests."""
    base = str(api.client.make_url("/"))
    page = await browser.new_page(**options)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: None if r.url.startswith(base) else problems.append(f"foreign request: {r.url}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    await page.goto(base)
    return page, problems


async def test_the_dashboard_shows_the_state_and_stops_and_starts_sending(browser: Browser) -> None:
    from playwright.async_api import expect

    # Started a little in the past: seeding moves the fake clock on by SEEDED_S, about to now.
    start = FakeClock(start=datetime.now(UTC) - timedelta(seconds=SEEDED_S))
    async with open_api(start, batch_size="3", dlr_token=DLR_TOKEN) as api:
        await seed(api)
        supervisor = api.container.supervisor()
        await supervisor.start()  # its first batch goes at once and sends the three pending
        await eventually(lambda: supervisor.status().last_batch is not None, what="the first batch")
        page, problems = await open_page(browser, api, viewport={"width": 1100, "height": 1000})

        state = page.locator("#sender-state")
        await expect(state).to_have_text("Sending")
        await expect(page.locator("#count-sent")).to_have_text("7")
        await expect(page.locator("#count-failed")).to_have_text("2")
        await expect(page.locator("#count-pending")).to_have_text("0")
        await expect(page.locator("#sent-list > li")).to_have_count(7)
        await expect(page.locator("#failed-list > li")).to_have_count(2)
        await expect(page.locator("#failed-list")).to_contain_text("number is blocked")
        await expect(page.locator("#failed-list")).to_contain_text("not a possible phone number")
        await expect(page.locator("#next-tick")).to_contain_text("in ")
        await expect(page.locator("#stop")).to_be_enabled()
        await expect(page.locator("#start")).to_be_disabled()

        await page.click("#stop")
        await expect(state).to_have_text("Stopped")
        await expect(page.locator("#next-tick")).to_have_text("stopped")
        assert not supervisor.status().running
        assert (await (await api.client.get("/api/v1/sender")).json())["running"] is False

        api.repository.add("+905301234200", "Sipariş onaylandı")  # waits: sending is stopped
        await api.clock.advance(api.container.counts().ttl_s)  # the counts are cached that long
        await expect(page.locator("#count-pending")).to_have_text("1", timeout=10_000)

        await page.click("#start")
        await expect(state).to_have_text("Sending")
        assert supervisor.status().running
        assert (await (await api.client.get("/api/v1/sender")).json())["running"] is True

        if SCREENSHOT:  # the README's picture: a few messages in every state, sending
            for i in range(3):
                api.repository.add(f"+90530123430{i}", f"Hatırlatma: ödemeniz {i + 2} gün içinde")
            sent = (await api.repository.list_messages(MessageStatus.SENT, 10)).items
            receipts = [{"messageId": m.message_id, "status": "DELIVRD"} for m in sent[1:5]]
            receipts.append({"messageId": sent[5].message_id, "status": "UNDELIV", "errorCode": "34"})
            posted = await api.client.post(
                "/api/v1/delivery-reports", json=receipts, headers={"x-ins-auth-key": DLR_TOKEN}
            )
            assert posted.status == 200
            await api.clock.advance(api.container.counts().ttl_s)
            await expect(page.locator("#count-pending")).to_have_text("4", timeout=10_000)
            await expect(page.locator("#count-delivered")).to_have_text("4", timeout=10_000)
            await page.screenshot(path=SCREENSHOT, full_page=True)
        assert problems == []


async def test_the_dashboard_asks_for_the_token(browser: Browser) -> None:
    from playwright.async_api import expect

    async with open_api(api_token=TOKEN) as api:
        page, problems = await open_page(browser, api)
        await expect(page.locator("#auth")).to_be_visible()
        await expect(page.locator("#start")).to_be_disabled()

        await page.fill("#token", "not-the-token")
        await page.click("#auth button[type=submit]")
        await expect(page.locator("#notice")).to_contain_text("refused")
        await expect(page.locator("#auth")).to_be_visible()

        await page.fill("#token", TOKEN)
        await page.click("#auth button[type=submit]")
        await expect(page.locator("#sender-state")).to_have_text("Stopped")
        await expect(page.locator("#auth")).to_be_hidden()
        await expect(page.locator("#notice")).to_be_hidden()
        assert await page.evaluate("sessionStorage.getItem('insider.apiToken')") == TOKEN

        await page.click("#start")
        await expect(page.locator("#sender-state")).to_have_text("Sending")
        assert api.container.supervisor().running
        # 401s are how the page learns it needs a token; anything else is a problem.
        assert [p for p in problems if "401" not in p] == []


async def test_the_dashboard_fits_a_phone(browser: Browser) -> None:
    from playwright.async_api import expect

    async with open_api() as api:
        await seed(api)
        page, problems = await open_page(
            browser, api, viewport={"width": 360, "height": 740}, device_scale_factor=2, is_mobile=True
        )
        await expect(page.locator("#count-sent")).to_have_text("4")
        overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than a phone's screen"
        for button in ("#start", "#stop"):
            box = await page.locator(button).bounding_box()
            assert box is not None and box["height"] >= 40  # big enough for a thumb
        assert problems == []


async def test_swagger_try_it_out_works_and_shows_no_authorize_without_a_token(browser: Browser) -> None:
    """Swagger UI's requests are same-origin, so the browser checks let them through."""
    from playwright.async_api import expect

    async with open_api() as api:
        supervisor = api.container.supervisor()
        await supervisor.start()
        page = await browser.new_page()
        await page.goto(str(api.client.make_url("/swagger")))
        stop = page.locator(".opblock-post", has_text="/api/v1/messages/stop").first
        await expect(stop).to_be_visible()
        assert await page.locator(".btn.authorize").count() == 0  # no token: nothing to authorize

        await stop.locator(".opblock-summary").click()
        await stop.locator(".try-out__btn").click()
        await stop.locator(".execute").click()
        await expect(stop.locator(".live-responses-table td.response-col_status:not(.col_header)")).to_have_text("200")
        await eventually(lambda: not supervisor.running, what="Swagger's stop to stop sending")


async def test_swagger_shows_authorize_with_a_token(browser: Browser) -> None:
    from playwright.async_api import expect

    async with open_api(api_token=TOKEN) as api:
        page = await browser.new_page()
        await page.goto(str(api.client.make_url("/swagger")))
        await expect(page.locator(".btn.authorize")).to_be_visible()


async def test_the_dashboard_marks_its_refresh_so_it_is_logged_at_debug(browser: Browser) -> None:
    async with open_api() as api:
        page = await browser.new_page()
        async with page.expect_request(lambda r: "/api/v1/stats" in r.url) as stats:
            await page.goto(str(api.client.make_url("/")))
        request = await stats.value
        assert await request.header_value("X-Insider-Refresh") == "1"


async def test_the_dashboard_shows_deliveries(browser: Browser) -> None:
    from playwright.async_api import expect

    from tests.unit.test_delivery_api import open_api as open_delivery_api

    async with open_delivery_api() as api:
        messages = await api.sent(3)
        receipts = [{"messageId": m.message_id, "status": "delivered"} for m in messages[:2]]
        receipts.append({"messageId": str(messages[2].message_id), "status": "UNDELIV", "errorCode": "34"})
        status, _ = await api.post(receipts)
        assert status == 200
        base = str(api.client.make_url("/"))
        page = await browser.new_page(viewport={"width": 1100, "height": 1000})
        problems: list[str] = []
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        await page.goto(base)

        await expect(page.locator("#count-delivered")).to_have_text("2")
        await expect(page.locator("#count-undelivered")).to_have_text("1")
        await expect(page.locator("#count-sent")).to_have_text("0")
        await expect(page.locator("#delivery-rate")).to_have_text("66.7%")
        await expect(page.locator("#sent-list > li")).to_have_count(3)
        delivered = page.locator(f'#sent-list > li[data-id="{messages[0].id}"]')
        await expect(delivered).to_have_attribute("data-status", "delivered")
        await expect(delivered.locator(".status")).to_have_text("delivered")
        undelivered = page.locator(f'#sent-list > li[data-id="{messages[2].id}"]')
        await expect(undelivered).to_contain_text("undelivered")
        await expect(undelivered).to_contain_text("error 34")
        assert problems == []


async def test_the_dashboard_queues_a_message_and_counts_its_segments_as_one_types(browser: Browser) -> None:
    from playwright.async_api import expect

    from tests.unit.test_messages_api import open_api as open_sqlite_api

    async with open_sqlite_api(default_region="TR") as api:
        page, problems = await open_page(browser, api.base, viewport={"width": 1100, "height": 1000})
        measure = page.locator("#compose-measure")
        await page.fill("#compose-content", "a" * 161)
        await expect(measure).to_have_text(
            "161 characters · GSM-7 · 2 segments — content is 161 characters, over the limit of 160"
        )
        await page.fill("#compose-content", "Hoş geldiniz 😀")
        await expect(measure).to_have_text("14 characters · UCS-2 · 1 segment")
        await page.fill("#compose-content", "€" * 80)
        await expect(measure).to_have_text("80 characters · GSM-7 · 1 segment")

        await page.fill("#compose-to", "0530 123 40 01")
        await page.fill("#compose-priority", "9")
        await page.click("#compose-submit")
        result = page.locator("#compose-result")
        await expect(result).to_contain_text("Queued message 1 to +905301234001 (GSM-7, 1 segment)")
        stored = await api.repository.get(1)
        assert stored is not None and (stored.priority, stored.content) == (9, "€" * 80)

        await page.fill("#compose-to", "12")
        await page.fill("#compose-content", "x")
        await page.click("#compose-submit")
        await expect(result).to_contain_text("to: to is not a possible phone number")
        assert problems == [p for p in problems if "422" in p]  # the refused POST is the only complaint


async def test_the_dashboard_lists_providers_and_takes_one_out_of_rotation(browser: Browser, tmp_path: Path) -> None:
    from playwright.async_api import expect

    from tests.unit.test_providers_api import down, open_providers

    async with open_providers(tmp_path) as two:
        two.alpha.responder = down
        for i in range(3):
            two.api.repository.add("+905301234001", f"m{i}")
        await two.send_all()  # alpha fails twice and its breaker opens; beta takes all three
        page, problems = await open_page(browser, two.api, viewport={"width": 1100, "height": 1000})

        rows = page.locator("#providers-list > tr")
        await expect(rows).to_have_count(3)
        alpha, beta = page.locator('tr[data-name="alpha"]'), page.locator('tr[data-name="beta"]')
        await expect(alpha.locator(".breaker")).to_have_text("open")
        await expect(alpha.locator(".failed")).to_have_text("2")
        await expect(alpha.locator(".error")).to_contain_text("HTTP 503: down")
        await expect(beta.locator(".breaker")).to_have_text("closed")
        await expect(beta.locator(".sent")).to_have_text("3")
        await expect(beta.locator(".cost")).to_have_text("0.03")
        await expect(page.locator('tr[data-name="gamma"] .rate')).to_have_text("50/s")
        await expect(page.locator("#sent-list")).to_contain_text("via beta (cost 0.01)")

        await beta.locator("button.switch").click()
        await expect(beta.locator(".enabled")).to_have_text("disabled")
        await expect(beta.locator("button.switch")).to_have_text("Enable")
        assert {n: st.enabled for n, st in (await two.api.repository.provider_states()).items()} == {"beta": False}
        await beta.locator("button.switch").click()
        await expect(beta.locator(".enabled")).to_have_text("enabled")
        assert {n: st.enabled for n, st in (await two.api.repository.provider_states()).items()} == {"beta": True}

        await page.fill("#compose-to", "+905301234009")
        await page.fill("#compose-content", "Merhaba")
        await expect(page.locator("#compose-route")).to_have_text(
            "Route turkey (failover: alpha → beta) · via beta · cost 0.01"
        )
        assert problems == []


async def test_the_dashboard_shows_the_suppressed_count_and_keeps_the_suppression_list(browser: Browser) -> None:
    from playwright.async_api import expect

    from insider.domain import Category, NewMessage
    from tests.unit.test_messages_api import open_api as open_sqlite_api

    async with open_sqlite_api(default_region="TR") as api:
        page, problems = await open_page(browser, api.base, viewport={"width": 1100, "height": 1000})
        await expect(page.locator("#suppressions-empty")).to_be_visible()
        await page.fill("#suppress-to", "0530 123 40 01")
        await page.select_option("#suppress-scope", "commercial")
        await page.fill("#suppress-reason", "asked by phone")
        await page.click("#suppress-submit")
        result = page.locator("#suppress-result")
        await expect(result).to_have_text("+905301234001 is suppressed (commercial: asked by phone).")
        row = page.locator('#suppressions-list > tr[data-to="+905301234001"]')
        await expect(row.locator(".scope")).to_have_text("commercial")
        await expect(row.locator(".reason")).to_have_text("asked by phone")
        await expect(row.locator(".source")).to_have_text("api")
        await expect(page.locator("#suppressions-empty")).to_be_hidden()

        await api.repository.enqueue_many([NewMessage.of("+905301234001", "sale", category=Category.COMMERCIAL)])
        await api.clock.advance(api.container.counts().ttl_s)  # the counts are cached that long
        await expect(page.locator("#count-suppressed")).to_have_text("1", timeout=10_000)

        await page.fill("#suppress-to", "12")
        await page.click("#suppress-submit")
        await expect(result).to_contain_text("to: to is not a possible phone number")

        await row.locator("button.remove").click()
        await expect(result).to_have_text("+905301234001 is off the list.")
        await expect(page.locator("#suppressions-list > tr")).to_have_count(0)
        assert await api.repository.get_suppression("+905301234001") is None
        assert problems == [p for p in problems if "422" in p]  # the refused POST is the only complaint


async def test_the_dashboard_counts_the_messages_waiting_for_their_hours_or_the_cap(browser: Browser) -> None:
    import dataclasses
    from datetime import timedelta

    from playwright.async_api import expect

    from insider.consent import CAP, SENDING_HOURS
    from insider.domain import Category, NewMessage
    from tests.unit.test_messages_api import open_api as open_sqlite_api

    async with open_sqlite_api() as api:
        page, problems = await open_page(browser, api.base, viewport={"width": 1100, "height": 1000})
        await expect(page.locator("#waiting-sending-hours")).to_have_text("0", timeout=10_000)
        await expect(page.locator("#waiting-cap")).to_have_text("0")
        later = api.clock.now() + timedelta(hours=6)
        sale = NewMessage.of("+905301234001", "sale", category=Category.COMMERCIAL)
        await api.repository.enqueue_many(
            [
                dataclasses.replace(sale, wait_until=later, wait_reason=SENDING_HOURS),
                dataclasses.replace(sale, wait_until=later, wait_reason=SENDING_HOURS),
                dataclasses.replace(sale, wait_until=later, wait_reason=CAP),
            ]
        )
        await api.clock.advance(api.container.counts().ttl_s)  # the counts are cached that long
        await expect(page.locator("#waiting-sending-hours")).to_have_text("2", timeout=10_000)
        await expect(page.locator("#waiting-cap")).to_have_text("1")
        await expect(page.locator("#count-pending")).to_have_text("3")
        assert problems == []
