"""Against a real Postfix, SMTPUTF8 on and off (``smtputf8_enable``): with it, a non-ASCII
local part is sent and forwarded; without it, only the recipient that needs it fails
(553 naming it) and the others are sent."""

from __future__ import annotations

import pytest

from tests.delivery.e2e.postfix.conftest import (
    StartApp,
    StartPostfix,
    forwarded,
    send,
    shown_recipients,
    statuses,
    wait_forwarded,
)
from tests.support.smtp_server import SMTPTestServer

UTF8 = "josé@example.com"
TO = ["ada@example.com", UTF8, "bob@example.net"]


@pytest.mark.timeout(60)
def test_smtputf8_on(start_postfix: StartPostfix, postroom: StartApp,
                     sink: SMTPTestServer) -> None:
    relay = start_postfix(settings={"smtputf8_enable": "yes"})
    client = postroom(relay).test_client()
    message = send(client, TO)
    assert statuses(client, message["id"]) == dict.fromkeys(TO, "sent")
    wait_forwarded(sink, 3)
    assert forwarded(sink) == dict.fromkeys(TO, 1)
    assert relay.logged(r"postfix/smtpd\[\d+\]: \w+: client=")


@pytest.mark.timeout(60)
def test_smtputf8_off_fails_only_the_recipient_that_needs_it(
        start_postfix: StartPostfix, postroom: StartApp, sink: SMTPTestServer) -> None:
    relay = start_postfix(settings={"smtputf8_enable": "no"})
    client = postroom(relay).test_client()
    message = send(client, TO)
    shown = {r["email"]: r for r in shown_recipients(client, message["id"])}
    assert {email: r["status"] for email, r in shown.items()} == {
        "ada@example.com": "sent", UTF8: "failed", "bob@example.net": "sent"}
    assert shown[UTF8].get("smtp_code") == 553 and UTF8 in shown[UTF8].get("error", "")
    wait_forwarded(sink, 2)
    assert forwarded(sink) == {"ada@example.com": 1, "bob@example.net": 1}
