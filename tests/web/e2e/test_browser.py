"""The pages in headless Chromium: served over HTTP, mail sent by a real worker.

The status on ``/validate`` and the campaign progress bars must change in place,
without a reload, while the worker delivers; the SMTP server is slowed down so
that each page is seen before its work is done.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import Browser, FilePayload, Page, expect

from cli.embedded import CaptureServer
from tasks.bounces.store import SuppressionList
from tests.conftest import AUTH
from tests.support.browser_support import chromium, screenshot
from tests.support.campaign_helpers import csv_bytes, people, wait_for
from tests.support.otp_support import code_in, latest_code
from tests.support.smtp_server import Received, SMTPTestServer

pytestmark = pytest.mark.worker

ADMIN = ("operator", "correct horse battery")
LIVE = 15_000  # ms to wait for a live update
SAME_PAGE = "window.postroomSamePage"  # set by the test; a reload would lose it

# Every change the campaign pages make to a progress bar or status, kept in
# sessionStorage so that it survives the reload the page does once it is final.
RECORD_PROGRESS = """
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-progress-url]").forEach(function (box) {
    var bar = box.querySelector("[data-part=bar]");
    var status = box.querySelector("[data-part=status]");
    new MutationObserver(function () {
      var seen = JSON.parse(sessionStorage.getItem("progressSeen") || "[]");
      seen.push({path: location.pathname, load: performance.timeOrigin,
                 value: bar.value, max: bar.max, status: status.textContent.trim()});
      sessionStorage.setItem("progressSeen", JSON.stringify(seen));
    }).observe(box, {subtree: true, childList: true, characterData: true, attributes: true});
  });
});
"""


@pytest.fixture
def config_overrides(request: pytest.FixtureRequest) -> dict[str, Any]:
    overrides: dict[str, Any] = {"ADMIN_USERNAME": ADMIN[0], "ADMIN_PASSWORD": ADMIN[1],
                                 "CAMPAIGN_BATCH_SIZE": 5}
    if "capture_server" in request.fixturenames:  # mail goes there; the Outbox is on
        capture: CaptureServer = request.getfixturevalue("capture_server")
        overrides.update(MAIL_PORT=capture.port, OUTBOX_DIR=str(capture.outbox))
    return overrides


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser, live_server: str) -> Iterator[Page]:
    """A fresh browser tab on the live server; the test fails on any script error."""
    context = browser.new_context(base_url=live_server, viewport={"width": 1000, "height": 700})
    context.set_default_timeout(LIVE)
    tab = context.new_page()
    script_errors: list[str] = []
    tab.on("pageerror", lambda error: script_errors.append(str(error)))
    yield tab
    context.close()
    assert script_errors == []


def ask_for_code(page: Page, address: str) -> str:
    """Submit ``/verify`` and land on ``/validate``; return the status shown on arrival."""
    page.goto("/verify")
    page.get_by_label("Email").fill(address)
    page.get_by_role("button", name="Send me a code").click()
    page.wait_for_url(re.compile(r"/validate\?request=[\w-]+$"))
    shown = page.locator("[data-otp-status]").text_content()
    page.evaluate(f"{SAME_PAGE} = true")
    return (shown or "").strip()


def enter_code(page: Page, code: str) -> int:
    """Type *code* on ``/validate`` and submit it; return the HTTP status of the answer."""
    page.locator("input[name=code]").fill(code)
    with page.expect_response(lambda r: r.request.method == "POST"
                              and "/validate" in r.url) as answer:
        page.get_by_role("button", name="Verify").click()
    page.wait_for_load_state()
    return answer.value.status


def test_code_is_mailed_shown_sent_live_and_accepted(page: Page,
                                                    smtp_server: SMTPTestServer) -> None:
    smtp_server.handler.data_delay = 1.5  # the page is up well before the mail is out
    assert ask_for_code(page, "ada@example.com") in ("queued", "sending")
    screenshot(page, "validate-queued")

    expect(page.locator("[data-otp-status]")).to_have_text("sent", timeout=LIVE)
    expect(page.locator("[data-otp-label]")).to_have_text(re.compile("Check your inbox"))
    expect(page.locator("[data-otp-reason]")).to_be_hidden()
    assert page.evaluate(SAME_PAGE) is True  # updated in place, not reloaded
    screenshot(page, "validate-sent")

    assert enter_code(page, latest_code(smtp_server, "ada@example.com")) == 200
    expect(page.get_by_role("heading")).to_have_text("Email address verified")
    screenshot(page, "verified")


def test_wrong_code_gets_the_generic_failure(page: Page, smtp_server: SMTPTestServer) -> None:
    ask_for_code(page, "grace@example.com")
    expect(page.locator("[data-otp-status]")).to_have_text("sent", timeout=LIVE)
    code = latest_code(smtp_server, "grace@example.com")
    wrong = str((int(code[0]) + 1) % 10) + code[1:]

    assert enter_code(page, wrong) == 422
    expect(page.get_by_role("alert")).to_have_text(re.compile(
        r"^That code did not work\. It may be wrong, used or expired"))
    expect(page.locator("input[name=code]")).to_have_value("")
    expect(page.locator("[data-otp-status]")).to_have_text("sent")
    assert "verified" not in (page.get_by_role("heading").text_content() or "").lower()
    screenshot(page, "validate-wrong-code")


def test_refused_address_shows_failed_with_the_servers_reason_live(
        page: Page, smtp_server: SMTPTestServer) -> None:
    def refuse(address: str) -> str:
        time.sleep(1.5)  # the page is up well before the answer comes
        return "550 5.1.1 <nobody@example.com>: no such user"

    smtp_server.handler.rcpt_reply = refuse
    assert ask_for_code(page, "nobody@example.com") in ("queued", "sending")
    expect(page.locator("[data-otp-reason]")).to_be_hidden()

    expect(page.locator("[data-otp-status]")).to_have_text("failed", timeout=LIVE)
    expect(page.locator("[data-otp-label]")).to_have_text("Not delivered.")
    reason = page.locator("[data-otp-reason]")
    expect(reason).to_be_visible()
    expect(reason.locator("code")).to_have_text(re.compile(r"^550\b.*no such user"))
    assert page.evaluate(SAME_PAGE) is True
    assert smtp_server.received == []
    screenshot(page, "validate-failed")


def sign_in(page: Page) -> None:
    page.goto("/campaigns/")
    page.wait_for_url(re.compile(r"/campaigns/login"))
    page.get_by_label("Username").fill(ADMIN[0])
    page.get_by_label("Password").fill(ADMIN[1])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/campaigns/$"))


def test_operator_uploads_a_campaign_and_watches_it_complete(
        page: Page, smtp_server: SMTPTestServer) -> None:
    smtp_server.handler.data_delay = 0.15  # 30 messages take a few seconds
    page.context.add_init_script(RECORD_PROGRESS)
    sign_in(page)
    expect(page.get_by_role("heading", name="Campaigns")).to_be_visible()

    page.get_by_role("link", name="New campaign").click()
    page.wait_for_url(re.compile(r"/campaigns/new$"))
    page.get_by_label("Name", exact=True).fill("Spring news")
    page.locator("#file").set_input_files(files=[FilePayload(
        name="spring.csv", mimeType="text/csv", buffer=csv_bytes(people(30)))])
    page.get_by_label("Subject", exact=True).fill("Hello {{ name }}")
    page.get_by_label("Text body").fill("Dear {{ name }}, your code is {{ code }}.")
    screenshot(page, "campaign-new")
    page.once("dialog", lambda dialog: dialog.accept())  # the confirm before sending
    page.get_by_role("button", name="Create and send").click()

    page.wait_for_url(re.compile(r"/campaigns/[\w-]+$"))
    show_path = "/" + page.url.split("/", 3)[3]
    expect(page.locator(".flash")).to_contain_text("Campaign queued: 30 recipient(s)")
    status = page.locator("[data-part=status]")
    assert status.text_content() in ("queued", "running")
    screenshot(page, "campaign-running")

    # the page follows the campaign without a reload (the record would survive one)
    expect(status).to_have_text("completed", timeout=LIVE)
    expect(page.locator("[data-part=bar]")).to_have_attribute("value", "30")
    seen = [s for s in page.evaluate("JSON.parse(sessionStorage.getItem('progressSeen'))")
            if s["path"] == show_path]
    first_load = [s for s in seen if s["load"] == seen[0]["load"]]
    assert any(0 < s["value"] < s["max"] == 30 for s in first_load), first_load
    assert any(s["status"] == "completed" and s["value"] == s["max"] == 30
               for s in first_load), first_load
    expect(page.locator("[data-part=counts]")).to_have_text("30 sent · 0 failed · 0 to go")
    assert len(smtp_server.received) == 30
    screenshot(page, "campaign-completed")

    page.get_by_role("link", name="All campaigns").click()
    row = page.locator(f"tr[data-progress-url='{show_path}/progress']")
    expect(row.get_by_role("link")).to_have_text("Spring news")
    expect(row.locator("[data-part=status]")).to_have_text("completed")
    expect(row.locator("[data-part=bar]")).to_have_attribute("value", "30")
    screenshot(page, "campaign-list")


def test_unsubscribe_link_from_a_campaign_mail(page: Page, live_server: str,
                                              worker_app: Flask,
                                              smtp_server: SMTPTestServer) -> None:
    body = json.dumps({"recipients": [{"email": "lin@example.com"}, {"email": "kai@example.com"}],
                       "subject": "News", "body": "Hello.\nLeave: {{ unsubscribe_url }}"})
    request = urllib.request.Request(f"{live_server}/api/campaigns", data=body.encode(),
                                     headers={**AUTH, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as created:
        assert created.status == 202
    [mail] = wait_for(lambda: smtp_server.to("lin@example.com"), timeout=15)
    link = str(mail.message["List-Unsubscribe"]).strip("<>")
    assert link.startswith(f"{live_server}/unsubscribe/")
    assert link in mail.message.get_content()

    page.goto(link)
    expect(page.get_by_role("heading")).to_have_text("Unsubscribe?")
    expect(page.locator("main")).to_contain_text("lin@example.com")
    screenshot(page, "unsubscribe-confirm")
    suppressed = SuppressionList(worker_app.extensions["redis"])
    assert "lin@example.com" not in suppressed  # following the link changes nothing

    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.get_by_role("heading")).to_have_text("You are unsubscribed")
    assert "lin@example.com" in suppressed and "kai@example.com" not in suppressed
    screenshot(page, "unsubscribe-done")


def test_outbox_shows_what_the_capture_server_kept(page: Page,
                                                  capture_server: CaptureServer) -> None:
    ask_for_code(page, "ada@example.com")
    expect(page.locator("[data-otp-status]")).to_have_text("sent", timeout=LIVE)
    [kept] = capture_server.outbox.glob("*.eml")
    code = code_in(Received("", [], kept.read_bytes(), 0))

    page.goto("/outbox/")  # captured mail needs the operator's sign-in
    page.wait_for_url(re.compile(r"/campaigns/login\?next=/outbox/"))
    sign_in(page)
    page.goto("/outbox/")
    row = page.get_by_role("row").filter(has_text="ada@example.com")
    expect(row).to_have_count(1)
    screenshot(page, "outbox")
    row.get_by_role("link").click()
    expect(page.locator(".message-body")).to_contain_text(code)
    # the sandboxed HTML frame is the one place the app frames itself (frame-ancestors 'self')
    expect(page.frame_locator("iframe.message-html").locator("body")).to_contain_text(code)
    expect(page.locator("main")).to_contain_text("Delivered to")
    screenshot(page, "outbox-message")
