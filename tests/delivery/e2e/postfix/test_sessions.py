"""Against a real Postfix: sessions as ``MAIL_MAX_EMAILS`` says, over STARTTLS and AUTH, with
Postfix's strictest pipelining rule (``reject_unauth_pipelining``)."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.delivery.e2e.postfix.conftest import StartApp, StartPostfix, forwarded, wait_forwarded
from tests.support.campaign_helpers import create, csv_bytes, people, recipients
from tests.support.smtp_server import SMTPTestServer

PASSWORD = "correct horse 7"


@pytest.mark.timeout(60)
def test_max_emails_per_session_over_starttls(start_postfix: StartPostfix,
                                              postroom: StartApp,
                                              sink: SMTPTestServer) -> None:
    relay = start_postfix(tls=True, users={"tester": PASSWORD}, settings={
        "smtpd_relay_restrictions": "permit_sasl_authenticated, reject",
        "smtpd_data_restrictions": "reject_unauth_pipelining"})
    assert relay.cert is not None
    client = postroom(relay, MAIL_USE_TLS=True, MAIL_TLS_CA_FILE=str(relay.cert),
                      MAIL_USERNAME="tester", MAIL_PASSWORD=PASSWORD,
                      MAIL_MAX_EMAILS=3).test_client()
    rows = people(7)
    campaign = create(client, csv_bytes(rows))
    records = {r["email"]: r["status"] for r in recipients(client, campaign["id"])}
    assert Counter(records.values()) == {"sent": 7}
    sessions = relay.logged(r"disconnect from .* mail=")
    assert len(sessions) == 3  # 3 + 3 + 1 messages
    assert all("starttls=1" in line and "auth=1" in line for line in sessions)
    assert not relay.logged(r"improper command pipelining|reject: DATA")
    assert len(relay.accepted()) == 7
    wait_forwarded(sink, 7)
    assert forwarded(sink) == {row["email"]: 1 for row in rows}
