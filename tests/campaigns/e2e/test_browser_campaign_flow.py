"""A campaign reviewed before it sends, in headless Chromium at 1280 and 390 px, with a
real worker: save as draft, send a test, start (confirmed), pause, resume — every state
read from the page as it changes, never from a reload."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, FilePayload, Page, expect

from tasks.campaigns.tasks import start_due_campaigns
from tests.conftest import AUTH
from tests.support.browser_support import chromium, screenshot
from tests.support.campaign_helpers import csv_bytes, people, wait_for
from tests.support.smtp_server import SMTPTestServer
from tests.web.e2e.test_browser import ADMIN, LIVE, SAME_PAGE, sign_in

pytestmark = pytest.mark.worker


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"ADMIN_USERNAME": ADMIN[0], "ADMIN_PASSWORD": ADMIN[1],
            "ADMIN_EMAIL": "ops@example.org", "CAMPAIGN_BATCH_SIZE": 5}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def actions(page: Page) -> list[str]:
    """The levers the page shows now."""
    shown = page.locator(".campaign-actions form:not([hidden]) button")
    return [text.strip() for text in shown.all_text_contents()]


@pytest.mark.parametrize("width", [1280, 390])
def test_draft_test_start_pause_resume(browser: Browser, live_server: str, width: int,
                                       smtp_server: SMTPTestServer) -> None:
    context = browser.new_context(base_url=live_server,
                                  viewport={"width": width, "height": 900})
    context.set_default_timeout(LIVE)
    page = context.new_page()
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    dialogs: list[str] = []

    def answer(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", answer)
    smtp_server.handler.data_delay = 0.1  # 40 messages take a few seconds
    try:
        sign_in(page)
        page.goto("/campaigns/new")
        page.get_by_label("Name", exact=True).fill(f"Reviewed {width}")
        page.locator("#file").set_input_files(files=[FilePayload(
            name="list.csv", mimeType="text/csv", buffer=csv_bytes(people(40)))])
        page.get_by_label("Subject", exact=True).fill("Hello {{ name }}")
        page.get_by_label("Text body").fill("Dear {{ name }}, your code is {{ code }}.")
        page.get_by_role("button", name="Save as draft").click()
        page.wait_for_url(re.compile(r"/campaigns/[0-9a-f]{32}$"))
        status = page.locator("[data-part=status]")
        expect(status).to_have_text("draft")
        expect(page.locator(".preview-subject")).to_have_text("Hello Person 0")
        assert actions(page) == ["Start", "Cancel"]
        assert smtp_server.received == []
        screenshot(page, f"campaign-draft-{width}")

        expect(page.get_by_label(re.compile("Send a test to"))).to_have_value("ops@example.org")
        page.get_by_role("button", name="Send test").click()
        expect(page.locator(".flash")).to_contain_text("Test sent to ops@example.org")
        expect(status).to_have_text("draft")
        page.wait_for_function("document.querySelector('[data-part=counts]')"
                               ".textContent.indexOf('0 sent') === 0")

        page.get_by_role("button", name="Start").click()
        assert dialogs and dialogs[-1].startswith("Start this campaign now?")
        page.wait_for_load_state()
        page.evaluate(f"{SAME_PAGE} = true")
        expect(status).to_have_text(re.compile("queued|running"))
        expect(page.get_by_role("button", name="Pause")).to_be_visible()
        expect(page.locator(".draft-review")).to_have_count(0)
        [test] = [r for r in smtp_server.received if r.recipients == ["ops@example.org"]]
        assert test.message["Subject"] == "[Test] Hello Person 0"

        expect(status).to_have_text("running")
        page.get_by_role("button", name="Pause").click()
        page.wait_for_load_state()
        expect(status).to_have_text(re.compile("pausing|paused"))
        expect(status).to_have_text("paused", timeout=3000)
        expect(page.get_by_role("button", name="Resume")).to_be_visible()
        expect(page.get_by_role("button", name="Pause")).to_be_hidden()
        sent_at_pause = len(smtp_server.received)
        page.wait_for_timeout(800)
        assert len(smtp_server.received) == sent_at_pause < 41  # nothing after paused
        screenshot(page, f"campaign-paused-{width}")

        page.get_by_role("button", name="Resume").click()
        page.wait_for_load_state()
        page.evaluate(f"{SAME_PAGE} = true")
        expect(status).to_have_text("completed", timeout=LIVE)
        assert page.evaluate(SAME_PAGE) is True  # the end came in place
        expect(page.get_by_role("button", name="Resume")).to_be_hidden()
        expect(page.locator("[data-part=counts]")).to_have_text("40 sent · 0 failed · 0 to go")
        rates = page.locator("[data-part=rate]").all_text_contents()
        assert len(rates) == 2 and rates[0] == rates[1] and float(rates[0]) > 0
        expect(page.locator("[data-part=chart-top]")).not_to_have_text("0")
        assert len(smtp_server.received) == 41
        screenshot(page, f"campaign-resumed-done-{width}")

        page.get_by_role("link", name="All recipients").click()
        card = page.locator("table.recipients tbody tr").first
        for column in ("Code", "Error", "Updated"):
            cell = card.locator(f"td[data-label={column}]")
            expect(cell).to_be_visible()
            box = cell.bounding_box()
            assert box is not None and box["x"] + min(box["width"], 40) <= width
        assert page.evaluate("document.documentElement.scrollWidth") <= width + 1
    finally:
        context.close()
    assert script_errors == []


def test_a_scheduled_campaign_that_starts_shows_its_levers_live(
        browser: Browser, live_server: str, smtp_server: SMTPTestServer) -> None:
    smtp_server.handler.data_delay = 0.1
    send_at = time.time() + 1.5
    body = json.dumps({"recipients": [{"email": p["email"]} for p in people(30)],
                       "subject": "Later", "body": "Hello", "send_at": send_at})
    request = urllib.request.Request(f"{live_server}/api/campaigns", data=body.encode(),
                                     headers={**AUTH, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as created:
        campaign_id = json.load(created)["id"]
    context = browser.new_context(base_url=live_server, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(LIVE)
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    try:
        sign_in(page)
        page.goto(f"/campaigns/{campaign_id}")
        status = page.locator("[data-part=status]")
        expect(status).to_have_text("scheduled")
        assert actions(page) == ["Cancel"]
        page.evaluate(f"{SAME_PAGE} = true")
        wait_for(lambda: time.time() > send_at, timeout=5)
        start_due_campaigns.delay()  # what beat does
        expect(status).to_have_text("running")
        expect(page.get_by_role("button", name="Pause")).to_be_visible()
        assert actions(page) == ["Pause", "Cancel"]
        assert page.evaluate(SAME_PAGE) is True  # no reload
        page.get_by_role("button", name="Cancel").click()
        expect(status).to_have_text("cancelled")
        assert actions(page) == []
    finally:
        context.close()
