"""Without ``MAIL_MAX_EMAILS`` a campaign batch carries on on the SMTP session the run before
it left open in the same worker process: the rest of a batch after its time slice, and the
next batch, open no session of their own. A slice never ends a session with the next
message's commands sent ahead (pipelining): it ends between transactions, and is kept."""

from __future__ import annotations

import logging

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tasks.delivery.engine.pool import SessionPool
from tasks.delivery.engine.session import BatchConnection
from tests.delivery.integration.test_session_pool import (
    SENDER,
    message,
    once_each,
    send_one,
    settings_for,
)
from tests.support.campaign_helpers import create, csv_bytes, people, show, wait_for
from tests.support.smtp_server import SMTPTestServer


@pytest.fixture
def worker_client(worker_app: Flask, celery_worker: object) -> FlaskClient:
    return worker_app.test_client()


def sent_once(smtp_server: SMTPTestServer, n: int) -> bool:
    recipients = [r.recipients[0] for r in smtp_server.received]
    return len(recipients) == n == len(set(recipients))


@pytest.mark.worker
@pytest.mark.parametrize("config_overrides", [
    {"CAMPAIGN_BATCHES_AHEAD": 1, "CAMPAIGN_BATCH_SIZE": 200, "CAMPAIGN_BATCH_SECONDS": 0.05,
     "MAIL_SESSION_IDLE": 30.0}])
def test_the_rest_of_a_sliced_batch_goes_on_on_its_session(
        worker_client: FlaskClient, smtp_server: SMTPTestServer,
        caplog: pytest.LogCaptureFixture) -> None:
    smtp_server.handler.pipelining = True  # commands go ahead with each message's content
    smtp_server.handler.data_delay = 0.01  # a slice (0.05 s) is over after a few messages
    with caplog.at_level(logging.INFO, logger="tasks.campaigns.tasks"):
        accepted = create(worker_client, csv_bytes(people(40)))
        done = wait_for(lambda: (shown := show(worker_client, accepted["id"]))["status"]
                        == "completed" and shown, timeout=60)
    sliced = [r for r in caplog.records if "its time slice is over" in r.getMessage()]
    assert len(sliced) >= 2, "the batch was not cut in several time slices"
    assert done["counts"]["sent"] == 40
    assert sent_once(smtp_server, 40)
    assert smtp_server.session_count == 1  # every run after the first used the kept session


@pytest.mark.worker
@pytest.mark.parametrize("config_overrides", [
    {"CAMPAIGN_BATCHES_AHEAD": 1, "CAMPAIGN_BATCH_SIZE": 10, "MAIL_SESSION_IDLE": 30.0}])
def test_the_next_batch_starts_on_the_previous_batchs_session(
        worker_client: FlaskClient, smtp_server: SMTPTestServer,
        caplog: pytest.LogCaptureFixture) -> None:
    smtp_server.handler.pipelining = True
    with caplog.at_level(logging.INFO, logger="tasks.campaigns.tasks"):
        accepted = create(worker_client, csv_bytes(people(40)))
        done = wait_for(lambda: (shown := show(worker_client, accepted["id"]))["status"]
                        == "completed" and shown, timeout=60)
    batches = [r for r in caplog.records if "batch" in r.getMessage()
               and "session(s) opened" in r.getMessage()]
    assert len(batches) == 4
    assert done["counts"]["sent"] == 40
    assert sent_once(smtp_server, 40)
    assert smtp_server.session_count == 1


@pytest.mark.worker
@pytest.mark.parametrize("config_overrides", [
    {"CAMPAIGN_BATCHES_AHEAD": 1, "CAMPAIGN_BATCH_SIZE": 10, "MAIL_SESSION_IDLE": 0}])
def test_without_kept_sessions_each_batch_opens_its_own(
        worker_client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    accepted = create(worker_client, csv_bytes(people(40)))
    done = wait_for(lambda: (shown := show(worker_client, accepted["id"]))["status"]
                    == "completed" and shown, timeout=60)
    assert done["counts"]["sent"] == 40
    assert sent_once(smtp_server, 40)
    assert smtp_server.session_count == 4


# -- lanes -------------------------------------------------------------------------------------


def test_bulk_batches_and_single_messages_keep_sessions_apart(
        smtp_server: SMTPTestServer) -> None:
    """A code's session holds a slot taken without the bulk headroom: no batch takes it."""
    settings = settings_for(smtp_server)
    pool = SessionPool(idle=30.0)
    try:
        assert send_one(pool, settings, 0) == "sent"  # a single message: kept, lane ""
        with BatchConnection(settings, pool=pool, lane="bulk") as bulk:
            assert bulk.send_data(SENDER, ["r1@example.com"], message(1))[
                "r1@example.com"].status == "sent"
            assert (bulk.sessions_opened, bulk.sessions_reused) == (1, 0)
        assert pool.kept() == 2  # one of each lane
        with BatchConnection(settings, pool=pool, lane="bulk") as bulk:
            assert bulk.send_data(SENDER, ["r2@example.com"], message(2))[
                "r2@example.com"].status == "sent"
            assert (bulk.sessions_opened, bulk.sessions_reused) == (0, 1)
        assert send_one(pool, settings, 3) == "sent"
        assert smtp_server.session_count == 2
        once_each(smtp_server, 4)
    finally:
        pool.close_all()
