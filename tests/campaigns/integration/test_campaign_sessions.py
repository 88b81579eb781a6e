"""A campaign of n recipients with ``MAIL_MAX_EMAILS = N`` uses exactly ceil(n/N) SMTP
sessions: batches are whole sessions (all but the last a multiple of N), time slices end
between sessions, with one batch at a time or several in flight."""

from __future__ import annotations

import collections
import logging
import math

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tasks.campaigns.tasks import MIN_BATCH, batch_size
from tests.support.campaign_helpers import create, csv_bytes, people, show, wait_for
from tests.support.smtp_server import SMTPTestServer


def per_session(smtp_server: SMTPTestServer) -> list[int]:
    """Messages each SMTP session carried, largest first."""
    counts = collections.Counter(r.session for r in smtp_server.received)
    return sorted(counts.values(), reverse=True)


def whole_sessions(n: int, n_per_session: int) -> list[int]:
    """What exactly ceil(n/N) sessions look like: N each, the rest on the last."""
    full, rest = divmod(n, n_per_session)
    return [n_per_session] * full + ([rest] if rest else [])


# -- the size of a batch ---------------------------------------------------------------------


@pytest.mark.parametrize(("queued", "sessions", "cap", "n"), [
    (120, 15, 200, 7), (120, 49, 200, 7), (5, 15, 200, 7), (21, 3, 200, 7),
    (5_000, 49, 200, 7), (5_000, 49, 200, 100), (100_000, 49, 200, 30), (7, 1, 5, 7),
    (1_000, 4, 1_000, 1), (3, 49, 200, 250)])
def test_batches_are_whole_sessions(queued: int, sessions: int, cap: int, n: int) -> None:
    size = batch_size(queued, sessions, cap=cap, per_session=n)
    assert size % n == 0 and size >= n
    largest = max(cap - cap % n, n)  # the cap rounded down to whole sessions
    assert size <= largest
    # the queue cut in batches of that size: every batch but the last a multiple of N
    batches = [min(size, queued - start) for start in range(0, queued, size)]
    assert sum(math.ceil(b / n) for b in batches) == math.ceil(queued / n)
    assert len(batches) <= max(sessions, math.ceil(queued / largest))


def test_sessions_are_spread_over_the_batches_in_flight() -> None:
    # 5,000 at N=7: 715 sessions over 49 batches -> 15 sessions (105 recipients) each
    assert batch_size(5_000, 49, cap=200, per_session=7) == 105
    # fewer sessions needed than batches allowed: one session's worth each, not MIN_BATCH
    assert batch_size(120, 49, cap=200, per_session=20) == 20
    # N below MIN_BATCH: as many whole sessions as MIN_BATCH needs
    assert batch_size(120, 49, cap=200, per_session=7) == 14 >= MIN_BATCH
    # without MAIL_MAX_EMAILS the recipients are spread as before
    assert batch_size(5_000, 49, cap=200, per_session=None) == 103
    assert batch_size(30, 49, cap=200, per_session=None) == MIN_BATCH


# -- end to end, eager -------------------------------------------------------------------------


@pytest.mark.parametrize("config_overrides", [
    {"MAIL_MAX_EMAILS": 7, "CAMPAIGN_BATCHES_AHEAD": 15}])
@pytest.mark.parametrize("n", [120, 5, 21])
def test_campaign_takes_exactly_ceil_n_over_n_sessions(
        client: FlaskClient, smtp_server: SMTPTestServer, n: int) -> None:
    accepted = create(client, csv_bytes(people(n)))
    assert show(client, accepted["id"])["counts"]["sent"] == n
    assert len({r.recipients[0] for r in smtp_server.received}) == n
    assert smtp_server.session_count == math.ceil(n / 7)  # 120 -> 18, 5 -> 1, 21 -> 3
    assert per_session(smtp_server) == whole_sessions(n, 7)


# -- end to end, a real worker -------------------------------------------------------------------


@pytest.fixture
def worker_client(worker_app: Flask, celery_worker: object) -> FlaskClient:
    return worker_app.test_client()


@pytest.mark.worker
@pytest.mark.parametrize("config_overrides", [
    {"MAIL_MAX_EMAILS": 7, "CAMPAIGN_BATCHES_AHEAD": 4}])
def test_several_batches_in_flight_take_exactly_ceil_n_over_n_sessions(
        worker_client: FlaskClient, smtp_server: SMTPTestServer) -> None:
    accepted = create(worker_client, csv_bytes(people(120)))
    done = wait_for(lambda: (shown := show(worker_client, accepted["id"]))["status"]
                    == "completed" and shown, timeout=30)
    assert done["counts"]["sent"] == 120
    assert len({r.recipients[0] for r in smtp_server.received}) == 120
    assert smtp_server.session_count == 18
    assert per_session(smtp_server) == whole_sessions(120, 7)


@pytest.mark.worker
@pytest.mark.parametrize("config_overrides", [
    {"MAIL_MAX_EMAILS": 7, "CAMPAIGN_BATCHES_AHEAD": 2, "CAMPAIGN_BATCH_SIZE": 70,
     "CAMPAIGN_BATCH_SECONDS": 0.05}])
def test_a_time_slice_ends_between_sessions(
        worker_client: FlaskClient, smtp_server: SMTPTestServer,
        caplog: pytest.LogCaptureFixture) -> None:
    smtp_server.handler.data_delay = 0.01  # a slice (0.05 s) is over in mid-session
    with caplog.at_level(logging.INFO, logger="tasks.campaigns.tasks"):
        accepted = create(worker_client, csv_bytes(people(120)))
        done = wait_for(lambda: (shown := show(worker_client, accepted["id"]))["status"]
                        == "completed" and shown, timeout=60)
    sliced = [r for r in caplog.records if "its time slice is over" in r.getMessage()]
    assert sliced, "no run was cut off by its time slice"
    assert done["counts"]["sent"] == 120
    assert len({r.recipients[0] for r in smtp_server.received}) == 120
    assert smtp_server.session_count == 18
    assert per_session(smtp_server) == whole_sessions(120, 7)
