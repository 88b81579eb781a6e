"""Every page in headless Chromium at desktop and phone sizes: nothing wider than the
screen at 390 px, every control styled, times shown in the viewer's zone, and a
screenshot of each page saved under ``artifacts/screenshots/`` for people to look at.
"""

from __future__ import annotations

import json
import re
import smtplib
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from cli.embedded import CaptureServer
from tests.conftest import AUTH
from tests.support.browser_support import chromium, screenshot
from tests.support.campaign_helpers import wait_for
from tests.support.smtp_server import SMTPTestServer
from tests.web.integration.test_outbox import rich_message

pytestmark = pytest.mark.worker

ADMIN = ("operator", "correct horse battery")
SIZES = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 844}}
LONG = "a-rather-long-mailbox-name.for-testing-wrapping"


@pytest.fixture
def config_overrides(capture_server: CaptureServer) -> dict[str, Any]:
    return {"ADMIN_USERNAME": ADMIN[0], "ADMIN_PASSWORD": ADMIN[1], "CAMPAIGN_BATCH_SIZE": 10,
            "OUTBOX_DIR": str(capture_server.outbox)}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


def post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={**AUTH, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 202
        created: dict[str, Any] = json.loads(answer.read())
        return created


def campaign_status(url: str, campaign_id: str) -> str:
    request = urllib.request.Request(f"{url}/api/campaigns/{campaign_id}", headers=AUTH)
    with urllib.request.urlopen(request, timeout=10) as answer:
        return str(json.loads(answer.read())["status"])


def overflow(page: Page) -> int:
    """How many CSS pixels the page is wider than the window (0 when it fits)."""
    return int(page.evaluate(
        "document.documentElement.scrollWidth - window.innerWidth"))


def sign_in(page: Page) -> None:
    page.goto("/campaigns/login")
    page.get_by_label("Username").fill(ADMIN[0])
    page.get_by_label("Password").fill(ADMIN[1])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/campaigns/$"))


@pytest.mark.parametrize("size", list(SIZES))
def test_every_page_fits_the_screen(browser: Browser, live_server: str, size: str,
                                    smtp_server: SMTPTestServer,
                                    capture_server: CaptureServer) -> None:
    smtp_server.handler.rcpt_reply = lambda address: (
        "550 5.1.1 mailbox unavailable, no such user here" if address.startswith("x") else None)
    recipients = [{"email": f"{'x' if i % 4 == 0 else 'p'}{i}.{LONG}@example.com",
                   "name": f"Person {i}"} for i in range(40)]
    sent = post_json(f"{live_server}/api/campaigns", {
        "name": "Autumn newsletter for every subscriber", "recipients": recipients,
        "subject": "Hello {{ name }}", "body": "Dear {{ name }}, the news.",
        "html": "<h1>News</h1><p>Dear {{ name }}</p>"})
    scheduled = post_json(f"{live_server}/api/campaigns", {
        "name": "Winter", "recipients": recipients[:3], "subject": "Hi {{ name }}",
        "body": "Later, {{ name }}.", "send_at": time.time() + 86_400})
    with smtplib.SMTP("127.0.0.1", capture_server.port, timeout=5) as session:
        session.send_message(rich_message(), to_addrs=[f"ada.{LONG}@example.com"])
    wait_for(lambda: campaign_status(live_server, sent["id"]) == "completed", timeout=30)
    [kept] = capture_server.outbox.glob("*.eml")

    context = browser.new_context(base_url=live_server, viewport=SIZES[size],  # type: ignore[arg-type]
                                  timezone_id="Asia/Tokyo")
    context.set_default_timeout(15_000)
    page = context.new_page()
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))

    page.goto("/campaigns/login")
    password = page.get_by_label("Password")
    assert password.evaluate("e => getComputedStyle(e).paddingTop") == "8px"  # styled
    check(page, size, "login")
    sign_in(page)
    campaign = f"/campaigns/{sent['id']}"
    shots = [("campaign-list", "/campaigns/"), ("campaign", campaign),
             ("campaign-scheduled", f"/campaigns/{scheduled['id']}"),
             ("campaign-recipients", f"{campaign}/recipients"),
             ("campaign-preview", f"/campaigns/{scheduled['id']}/preview"),
             ("campaign-new", "/campaigns/new"), ("suppressions", "/campaigns/suppressions"),
             ("outbox", "/outbox/"), ("outbox-message", f"/outbox/{kept.stem}"),
             ("verify", "/verify"), ("validate", "/validate")]
    for name, path in shots:
        page.goto(path)
        page.wait_for_load_state("load")
        check(page, size, name)

    page.goto(campaign)
    expect(page.locator(".cut-short")).to_have_count(0)  # 10 failed: all are shown
    start = page.locator("time.local-time").first
    expect(start).to_have_attribute("data-local", "1")
    assert "UTC" not in (start.text_content() or "")  # shown in the viewer's zone
    assert "UTC" in (start.get_attribute("title") or "")  # the UTC text kept as a title
    page.goto("/outbox/")
    expect(page.get_by_role("link", name="Your report")).to_be_in_viewport()
    context.close()
    assert script_errors == []


def check(page: Page, size: str, name: str) -> None:
    """Save a screenshot of the page and fail when it is wider than the window."""
    path = screenshot(page, f"{size}-{name}")
    assert path.stat().st_size > 0
    assert overflow(page) <= 0, f"{page.url} is {overflow(page)} px too wide at {size}"


def test_the_outbox_list_refreshes_itself_and_clears(browser: Browser, live_server: str,
                                                     capture_server: CaptureServer) -> None:
    context = browser.new_context(base_url=live_server, viewport=SIZES["phone"])  # type: ignore[arg-type]
    context.set_default_timeout(15_000)
    page = context.new_page()
    sign_in(page)  # captured mail needs the operator's sign-in
    page.goto("/outbox/")
    expect(page.locator("main")).to_contain_text("No messages captured yet.")
    with smtplib.SMTP("127.0.0.1", capture_server.port, timeout=5) as session:
        session.send_message(rich_message(), to_addrs=["ada@example.com"])
    expect(page.get_by_role("link", name="Your report")).to_be_visible()  # no click to reload
    expect(page.locator(".outbox-count")).to_contain_text("1 message")
    screenshot(page, "phone-outbox-refreshed")

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Clear").click()
    expect(page.locator(".flash")).to_have_text("Deleted 1 captured message.")
    expect(page.locator(".outbox-count")).to_contain_text("0 messages")
    assert list(capture_server.outbox.glob("*.eml")) == []
    context.close()
