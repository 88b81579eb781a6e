"""The reconciler finds work that stopped moving and enqueues it again (eager Celery,
real Redis and SMTP): a message, a code and a campaign whose tasks never ran, a
campaign's abandoned claims and overdue retries; and the suppression list read at
send time."""

from __future__ import annotations

import time

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from tasks.bounces.store import SuppressionList
from tasks.campaigns.store import CampaignStore
from tasks.campaigns.tasks import start_due_campaigns
from tasks.codes.store import OTPStore
from tasks.delivery.ledger import LEASE_PREFIX, Outcome
from tasks.delivery.watch_list import WATCH_AFTER, Watchlist
from tasks.messages.store import MessageStore
from tasks.reconciler.service import Reconciler
from tests.conftest import AUTH
from tests.support.lease_support import lease
from tests.support.smtp_server import SMTPTestServer

LATER = WATCH_AFTER + 1  # seconds: past every first look


def new_campaign(redis_client: redis.Redis, n: int, *, send_at: float | None = None) -> str:
    store = CampaignStore(redis_client)
    campaign_id = store.begin(name="r", subject="Hi {{ name }}", body="Dear {{ name }}",
                              html=None, sender=None, base_url="http://postroom.test")
    store.add_recipients(campaign_id, [(f"r{i}@example.com", {"name": f"R{i}"})
                                       for i in range(n)], start=0)
    store.open(campaign_id, total=n, send_at=send_at, report={})
    return campaign_id


def reconcile(app: Flask, redis_client: redis.Redis, *, at: float) -> object:
    with app.app_context():
        return Reconciler(redis_client, grace=30).run(now=at)


def test_a_message_whose_task_never_ran_is_sent(app: Flask, redis_client: redis.Redis,
                                                smtp_server: SMTPTestServer) -> None:
    MessageStore(redis_client).create({"to": ["ada@example.com"], "subject": "Lost",
                                       "body": "x"}, ["ada@example.com"])
    assert not reconcile(app, redis_client, at=time.time())  # not yet due
    found = reconcile(app, redis_client, at=time.time() + LATER)
    assert [r.recipients for r in smtp_server.received] == [["ada@example.com"]], found
    assert len(Watchlist(redis_client)) == 0  # settled: off the list
    reconcile(app, redis_client, at=time.time() + 2 * LATER)
    assert len(smtp_server.received) == 1  # nothing sent twice


def test_a_delivery_leaves_the_watch_list_only_once_no_recipient_is_unsettled(
        redis_client: redis.Redis) -> None:
    store = MessageStore(redis_client)
    message = store.create({"to": ["ada@example.com", "bob@example.com"], "subject": "Hi",
                            "body": "x"}, ["ada@example.com", "bob@example.com"])
    ledger, watch = store.ledger(message.id), Watchlist(redis_client)
    run = lease(redis_client, "one-run")
    ledger.claim([0, 1], "one-run", run)
    ledger.finish("one-run", run, [Outcome(0, "sent", 250, None),
                                   Outcome(1, "deferred", 451, "later", retry_at=time.time())],
                  max_attempts=5)
    assert not watch.done_if_settled("message", message.id, ledger.counts_key)
    assert len(watch) == 1  # bob is still to be decided: the reconciler keeps looking
    ledger.claim([1], "one-run", run)
    ledger.finish("one-run", run, [Outcome(1, "failed", 550, "no such user")], max_attempts=5)
    assert watch.done_if_settled("message", message.id, ledger.counts_key)
    assert len(watch) == 0


def test_a_code_whose_task_never_ran_is_mailed(app: Flask, redis_client: redis.Redis,
                                               smtp_server: SMTPTestServer) -> None:
    with app.app_context():
        request = OTPStore.from_config(redis_client, app.config).create("ada@example.com")
    reconcile(app, redis_client, at=time.time() + LATER)
    [received] = smtp_server.received
    assert received.message["Subject"] == "Your verification code"
    with app.app_context():
        stored = OTPStore.from_config(redis_client, app.config).get(request.id)
        assert stored is not None and stored.status == "sent"


def test_a_queued_campaign_whose_start_was_lost_is_started(
        app: Flask, redis_client: redis.Redis, smtp_server: SMTPTestServer) -> None:
    campaign_id = new_campaign(redis_client, 5)
    reconcile(app, redis_client, at=time.time() + LATER)
    assert CampaignStore(redis_client).status(campaign_id) == "completed"
    assert len(smtp_server.received) == 5


def test_abandoned_claims_and_overdue_retries_of_a_running_campaign_are_sent(
        app: Flask, redis_client: redis.Redis, smtp_server: SMTPTestServer) -> None:
    store = CampaignStore(redis_client)
    campaign_id = new_campaign(redis_client, 6)
    store.transition(campaign_id, ("queued",), "running")
    Watchlist(redis_client).done("campaign", campaign_id)
    ledger = store.ledger(campaign_id)
    dead = lease(redis_client, "a-worker-that-died")
    ledger.claim([0, 1], "a-worker-that-died", dead)
    redis_client.delete(LEASE_PREFIX + "a-worker-that-died")  # its lease ran out: abandoned
    lost = lease(redis_client, "a-batch-whose-retry-was-lost")
    ledger.claim([2], "a-batch-whose-retry-was-lost", lost)
    ledger.finish("a-batch-whose-retry-was-lost", lost,
                  [Outcome(2, "deferred", 451, "later", retry_at=time.time() - 60)],
                  max_attempts=5)
    store.reserve_batch(campaign_id, size=100, ahead=1)  # its task was never delivered
    assert ledger.orphaned() == [0, 1] and ledger.due_for_retry(time.time()) == [2]

    reconcile(app, redis_client, at=time.time() + 31)
    assert store.status(campaign_id) == "completed", ledger.counts()
    ids = [str(r.message["Message-ID"]) for r in smtp_server.received]
    assert len(ids) == len(set(ids)) == 6, ids
    assert sorted(ids) == sorted(f"<{campaign_id}.{i}@postroom.test>" for i in range(6))


@pytest.mark.parametrize("config_overrides", [{"PUBLIC_URL": "http://x"}])
def test_an_unsubscribe_reaches_a_scheduled_campaign_and_retry_failed(
        app: Flask, client: FlaskClient, redis_client: redis.Redis,
        smtp_server: SMTPTestServer) -> None:
    campaign_id = new_campaign(redis_client, 4, send_at=time.time() + 1)
    SuppressionList(redis_client).add("R1@example.com")  # after the campaign was created
    smtp_server.handler.rcpt_reply = lambda a: "550 5.7.1 no" if a == "r2@example.com" else None
    time.sleep(1.1)
    with app.app_context():
        start_due_campaigns.apply()
    ledger = CampaignStore(redis_client).ledger(campaign_id)
    assert [r.status for r in ledger.get([0, 1, 2, 3])] == ["sent", "suppressed", "failed",
                                                             "sent"]
    SuppressionList(redis_client).add("r2@example.com")
    smtp_server.handler.rcpt_reply = lambda a: None
    retried = client.post(f"/api/campaigns/{campaign_id}/retry-failed", headers=AUTH)
    assert retried.status_code == 200, retried.get_json()
    assert [r.status for r in ledger.get([0, 1, 2, 3])] == ["sent", "suppressed", "suppressed",
                                                             "sent"]
    assert sorted(a for r in smtp_server.received for a in r.recipients) == [
        "r0@example.com", "r3@example.com"]
