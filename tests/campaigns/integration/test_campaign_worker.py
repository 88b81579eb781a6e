"""Campaigns through a real Celery worker on Redis: schedule, pause, resume, cancel, retry."""

from __future__ import annotations

import collections
import time
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tasks.campaigns.tasks import start_due_campaigns
from tests.conftest import AUTH
from tests.support.campaign_helpers import (
    act,
    create,
    csv_bytes,
    people,
    recipients,
    show,
    wait_for,
)
from tests.support.smtp_server import SMTPTestServer

pytestmark = pytest.mark.worker


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"CAMPAIGN_BATCH_SIZE": 20, "CAMPAIGN_BATCHES_AHEAD": 2}


@pytest.fixture
def client(worker_app: Flask, celery_worker: object) -> FlaskClient:
    return worker_app.test_client()


def slow_server(smtp_server: SMTPTestServer, seconds: float) -> None:
    """Make every DATA take *seconds* so a campaign is still running when we act on it."""
    def reply(envelope: object) -> None:
        time.sleep(seconds)
        return None

    smtp_server.handler.data_reply = reply


def settled(client: FlaskClient, campaign_id: str, status: str) -> dict[str, Any] | None:
    shown = show(client, campaign_id)
    counts = shown["counts"]
    if shown["status"] == status and counts["sending"] == 0:
        return shown
    return None


def each_once(smtp_server: SMTPTestServer) -> collections.Counter[str]:
    got = collections.Counter(r.recipients[0] for r in smtp_server.received)
    assert set(got.values()) <= {1}, got.most_common(3)
    return got


def test_scheduled_campaign_starts_when_due(client: FlaskClient, worker_app: Flask,
                                            smtp_server: SMTPTestServer) -> None:
    assert worker_app.extensions["celery"].conf.beat_schedule[
        "postroom-campaigns-due"]["task"] == "postroom.campaign.start_due"
    send_at = time.time() + 2.0
    accepted = create(client, csv_bytes(people(30)), send_at=str(send_at))
    assert accepted["status"] == "scheduled"
    assert show(client, accepted["id"])["send_at"] == pytest.approx(send_at)

    start_due_campaigns.delay()  # what beat runs: too early, nothing starts
    time.sleep(0.5)
    assert show(client, accepted["id"])["status"] == "scheduled"
    assert smtp_server.received == []

    wait_for(lambda: time.time() > send_at, timeout=5)
    start_due_campaigns.delay()
    done = wait_for(lambda: settled(client, accepted["id"], "completed"), timeout=20)
    assert done["counts"]["sent"] == 30 and done["started_at"] >= send_at
    assert len(each_once(smtp_server)) == 30


def test_scheduled_campaign_can_be_cancelled(client: FlaskClient,
                                             smtp_server: SMTPTestServer) -> None:
    accepted = create(client, csv_bytes(people(25)), send_at=str(time.time() + 0.5))
    assert act(client, accepted["id"], "cancel").get_json()["status"] == "cancelled"
    wait_for(lambda: show(client, accepted["id"])["counts"]["cancelled"] == 25, timeout=10)
    time.sleep(0.6)
    start_due_campaigns.delay()
    time.sleep(0.5)
    assert show(client, accepted["id"])["status"] == "cancelled"
    assert smtp_server.received == []
    assert act(client, accepted["id"], "cancel").status_code == 409
    assert act(client, accepted["id"], "resume").status_code == 409


def test_pause_stops_new_batches_and_resume_continues(client: FlaskClient,
                                                      smtp_server: SMTPTestServer) -> None:
    slow_server(smtp_server, 0.01)
    accepted = create(client, csv_bytes(people(300)))
    campaign_id = accepted["id"]
    wait_for(lambda: len(smtp_server.received) >= 30, timeout=20)
    asked = time.monotonic()
    paused = act(client, campaign_id, "pause")
    assert paused.status_code == 200 and paused.get_json()["status"] in ("pausing", "paused")
    wait_for(lambda: show(client, campaign_id)["status"] == "paused", timeout=5)
    assert time.monotonic() - asked < 2.0  # pausing ends once the batches sending stop
    at_paused = len(smtp_server.received)
    shown = wait_for(lambda: settled(client, campaign_id, "paused"), timeout=10)
    time.sleep(0.7)  # nothing more goes out once paused
    sent_while_paused = len(smtp_server.received)
    assert sent_while_paused == at_paused
    assert sent_while_paused == show(client, campaign_id)["counts"]["sent"]
    assert sent_while_paused == shown["counts"]["sent"] < 300
    assert shown["counts"]["queued"] == 300 - sent_while_paused
    assert act(client, campaign_id, "pause").status_code == 409

    resumed = act(client, campaign_id, "resume")
    assert resumed.status_code == 200 and resumed.get_json()["status"] == "running"
    done = wait_for(lambda: settled(client, campaign_id, "completed"), timeout=25)
    assert done["counts"]["sent"] == 300
    assert len(each_once(smtp_server)) == 300
    assert act(client, campaign_id, "resume").status_code == 409


def test_cancel_marks_every_unsent_recipient(client: FlaskClient,
                                             smtp_server: SMTPTestServer) -> None:
    slow_server(smtp_server, 0.01)
    accepted = create(client, csv_bytes(people(300)))
    campaign_id = accepted["id"]
    wait_for(lambda: len(smtp_server.received) >= 20, timeout=20)
    assert act(client, campaign_id, "cancel").get_json()["status"] == "cancelled"

    def all_settled() -> dict[str, Any] | None:
        shown = show(client, campaign_id)
        c = shown["counts"]
        return shown if c["sent"] + c["cancelled"] == 300 else None

    shown = wait_for(all_settled, timeout=15)
    time.sleep(0.3)
    got = each_once(smtp_server)
    assert len(got) == shown["counts"]["sent"] < 300
    cancelled = {r["email"] for r in recipients(client, campaign_id, "cancelled")}
    assert len(cancelled) == 300 - len(got) and not cancelled & set(got)
    assert show(client, campaign_id)["status"] == "cancelled"


def test_retry_failed_requeues_only_failed_recipients(client: FlaskClient,
                                                      smtp_server: SMTPTestServer) -> None:
    refusing = {f"person{i:05d}@example.com" for i in (3, 17, 18, 44)}
    smtp_server.handler.rcpt_reply = (
        lambda address: "550 5.7.1 mailbox unavailable" if address in refusing else None)
    accepted = create(client, csv_bytes(people(60)))
    campaign_id = accepted["id"]
    done = wait_for(lambda: settled(client, campaign_id, "completed"), timeout=20)
    assert (done["counts"]["sent"], done["counts"]["failed"]) == (56, 4)
    failed = recipients(client, campaign_id, "failed")
    assert {r["email"] for r in failed} == refusing
    assert {(r["smtp_code"], r["attempts"]) for r in failed} == {(550, 1)}
    assert {a for a, _ in smtp_server.handler.refused} == refusing

    smtp_server.handler.rcpt_reply = lambda address: None
    before = len(smtp_server.received)
    retried = act(client, campaign_id, "retry-failed")
    assert retried.status_code == 200 and retried.get_json()["status"] == "running"
    done = wait_for(lambda: settled(client, campaign_id, "completed"), timeout=20)
    assert (done["counts"]["sent"], done["counts"]["failed"]) == (60, 0)
    again = smtp_server.received[before:]
    assert sorted(r.recipients[0] for r in again) == sorted(refusing)
    assert len(each_once(smtp_server)) == 60
    conflict = act(client, campaign_id, "retry-failed")
    assert conflict.status_code == 409
    assert "no failed recipients" in conflict.get_json()["error"]["message"]


def test_single_mail_and_otp_flow_during_a_large_campaign(
        client: FlaskClient, smtp_server: SMTPTestServer, worker_app: Flask) -> None:
    worker_app.config["CAMPAIGN_BATCH_SIZE"] = 100
    accepted = create(client, csv_bytes(people(5000)), body="Hi {{ name }}")
    campaign_id = accepted["id"]
    wait_for(lambda: len(smtp_server.received) >= 200, timeout=20)

    message = client.post("/api/messages", json={"to": "urgent@example.org", "subject": "Now",
                                                 "body": "single message"}, headers=AUTH)
    assert message.status_code == 202
    otp = client.post("/api/otp", json={"email": "login@example.org"}, headers=AUTH)
    assert otp.status_code == 202
    wait_for(lambda: smtp_server.to("urgent@example.org") and smtp_server.to("login@example.org"),
             timeout=20, interval=0.01)
    campaign_sent_by_then = sum(1 for r in smtp_server.received
                                if r.recipients[0].endswith("@example.com"))
    status_then = show(client, campaign_id)
    assert status_then["status"] == "running"
    assert campaign_sent_by_then < 5000

    done = wait_for(lambda: settled(client, campaign_id, "completed"), timeout=40)
    assert done["counts"]["sent"] == 5000
    assert done["finished_at"] > done["started_at"]
