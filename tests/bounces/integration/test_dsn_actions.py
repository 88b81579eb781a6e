"""DSNs read as Postfix sends them: ``Action: failed`` is a bounce whatever the status class
(a 4.x.x failure is a relay giving up, e.g. queue expiry), ``delayed`` is only recorded,
reports are matched by ``Original-Envelope-Id`` (ENVID) as well, and bounces are counted
in ``postroom_deliveries_total{outcome="bounced"}``. Real Redis and SMTP, Celery eager."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from tasks.bounces.reports import read_report
from tasks.bounces.store import SuppressionList
from tasks.campaigns.store import CampaignStore
from tasks.delivery.engine.verp import BounceRef, verp_address
from tasks.messages.store import MessageStore
from tests.conftest import AUTH
from tests.support.campaign_helpers import create, csv_bytes, people
from tests.support.paths import FIXTURES
from tests.support.smtp_server import SMTPTestServer

FIXTURES = FIXTURES / "bounces"
SECRET = "test-secret-key"  # tests/conftest.py app_config's SECRET_KEY


def dsn(*, recipient: str, message_id: str = "<lost@elsewhere.example>",
        action: str = "failed", status: str = "5.1.1", envelope_id: str | None = None) -> bytes:
    """Postfix's bounce (tests/fixtures/bounces/postfix.eml) with the given fields."""
    text = (FIXTURES / "postfix.eml").read_text()
    for field, value in (("{recipient}", recipient), ("{message_id}", message_id),
                         ("{return_path}", "noreply@postroom.test")):
        text = text.replace(field, value)
    text = text.replace("Action: failed\nStatus: 5.1.1",
                        f"Action: {action}\nStatus: {status}")
    if envelope_id is not None:
        text = text.replace("Reporting-MTA: dns; mx.example.org\n",
                            f"Original-Envelope-Id: {envelope_id}\n"
                            "Reporting-MTA: dns; mx.example.org\n")
    return text.replace("\n", "\r\n").encode()


def token(ref: BounceRef, secret: str = SECRET) -> str:
    """The signed token an ENVID carries (the VERP address's ``+`` part)."""
    return verp_address("x@y.example", secret, ref).split("+", 1)[1].split("@")[0]


def post(client: FlaskClient, raw: bytes) -> Any:
    return client.post("/api/bounces", data=raw, headers=AUTH,
                       content_type="message/rfc822")


def bounced_total(client: FlaskClient, kind: str) -> float:
    response = client.get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            if (sample.name == "postroom_deliveries_total"
                    and sample.labels == {"kind": kind, "outcome": "bounced"}):
                return float(sample.value)
    raise AssertionError("postroom_deliveries_total{outcome=bounced} is missing")


def sent_message_id(smtp_server: SMTPTestServer, address: str) -> str:
    [received] = smtp_server.to(address)
    return str(received.message["Message-ID"])


@pytest.mark.parametrize("status", ["4.4.1", "4.2.2", "5.1.1"])
def test_failed_is_permanent_whatever_the_status_class(status: str) -> None:
    [reported] = read_report(dsn(recipient="ada@example.com", status=status)).recipients
    assert (reported.action, reported.status, reported.permanent) == ("failed", status, True)


def test_delayed_is_not_permanent_and_the_envelope_id_is_read() -> None:
    report = read_report(dsn(recipient="ada@example.com", action="delayed", status="4.4.1",
                             envelope_id="m0123+2Eabc"))
    [reported] = report.recipients
    assert (reported.action, reported.permanent) == ("delayed", False)
    assert report.envelope_id == "m0123.abc"  # xtext-decoded (RFC 3461 .4)
    assert read_report(dsn(recipient="ada@example.com")).envelope_id is None


def test_a_queue_expiry_failure_bounces_suppresses_and_counts(
        client: FlaskClient, smtp_server: SMTPTestServer, redis_client: redis.Redis) -> None:
    rows = people(2)
    campaign = create(client, csv_bytes(rows))
    gone = rows[0]["email"]
    assert bounced_total(client, "campaign") == 0
    answer = post(client, dsn(recipient=gone, status="4.4.1",
                              message_id=sent_message_id(smtp_server, gone)))
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["matched"] == [
        {"email": gone, "action": "failed", "campaign_id": campaign["id"]}]
    records = CampaignStore(redis_client).ledger(campaign["id"]).get([0, 1])
    assert [r.status for r in records] == ["bounced", "sent"]
    assert gone in SuppressionList(redis_client)
    assert bounced_total(client, "campaign") == 1
    # the same report again bounces nothing new and counts nothing more
    post(client, dsn(recipient=gone, status="4.4.1",
                     message_id=sent_message_id(smtp_server, gone)))
    assert bounced_total(client, "campaign") == 1


def test_a_delay_counts_nothing(client: FlaskClient, smtp_server: SMTPTestServer,
                                redis_client: redis.Redis) -> None:
    rows = people(1)
    campaign = create(client, csv_bytes(rows))
    slow = rows[0]["email"]
    answer = post(client, dsn(recipient=slow, action="delayed", status="4.4.1",
                              message_id=sent_message_id(smtp_server, slow)))
    assert answer.get_json()["matched"][0]["action"] == "delayed"
    [record] = CampaignStore(redis_client).ledger(campaign["id"]).get([0])
    assert record.status == "sent" and slow not in SuppressionList(redis_client)
    assert bounced_total(client, "campaign") == 0


def test_a_report_is_matched_by_its_envelope_id(client: FlaskClient,
                                                smtp_server: SMTPTestServer,
                                                redis_client: redis.Redis) -> None:
    accepted = client.post("/api/messages", headers=AUTH, json={
        "to": ["ada@example.com", "bob@example.net"], "subject": "Hi", "body": "Hello"}
    ).get_json()
    records, _ = MessageStore(redis_client).ledger(accepted["id"]).page(limit=10)
    [bob] = [r for r in records if r.email == "bob@example.net"]
    # no VERP address, and the copy of the original lost its Message-ID: only the ENVID
    forged = dsn(recipient="bob@example.net",
                 envelope_id=token(BounceRef("message", accepted["id"], bob.index), "other"))
    assert post(client, forged).status_code == 422  # signed elsewhere: matches nothing
    answer = post(client, dsn(recipient="bob@example.net", envelope_id=token(
        BounceRef("message", accepted["id"], bob.index))))
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["matched"] == [
        {"email": "bob@example.net", "action": "failed", "message_id": accepted["id"]}]
    shown = client.get(f"/api/messages/{accepted['id']}", headers=AUTH).get_json()
    assert [(r["email"], r["status"]) for r in shown["recipients"]] == [
        ("ada@example.com", "sent"), ("bob@example.net", "bounced")]
    assert bounced_total(client, "message") == 1
    # an ENVID naming another recipient than the report's does not bounce the wrong one
    other = dsn(recipient="bob@example.net", envelope_id=token(
        BounceRef("message", accepted["id"], 1 - bob.index)))
    assert post(client, other).status_code == 422
    assert "ada@example.com" not in SuppressionList(redis_client)
