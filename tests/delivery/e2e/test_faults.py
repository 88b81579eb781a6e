"""Faults with real processes: workers SIGKILLed, Redis restarted or its connections
killed, the relay gone for a while. Each test counts what the SMTP server received by
Message-ID and recipient, and says the figures in its assertion messages.

Workers run as ``make run`` runs them (bulk in threads); beat runs the reconciler every
second and claims lease out in two, so recovery is measured in seconds, never in the
broker's visibility timeout (left at its two hours here).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tasks.campaigns.store import CampaignStore
from tests.support.smtp_server import SMTPTestServer
from tests.support.worker_processes import WorkerProcesses
from web.testing import EmbeddedRedis

pytestmark = pytest.mark.worker

FAST_RECOVERY = {
    "CELERY_VISIBILITY_TIMEOUT": "7200",  # recovery must not wait for it
    "RECONCILE_INTERVAL": "1",
    "CLAIM_LEASE": "2",
    "CAMPAIGN_BATCH_SIZE": "50",
    "DELIVERY_BACKOFF_BASE": "0.5",
    "DELIVERY_BACKOFF_CAP": "2",
    "MAIL_TIMEOUT": "5",
}


def wait_until(condition: Callable[[], bool], timeout: float, failure: Callable[[], str]) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(failure())
        time.sleep(0.1)
    return time.monotonic() - started


def new_campaign(redis_client: redis.Redis, n: int) -> str:
    store = CampaignStore(redis_client)
    campaign_id = store.begin(name="fault", subject="Hello {{ name }}",
                              body="Dear {{ name }},\nyour statement is ready.\n", html=None,
                              sender=None, base_url="http://postroom.test")
    store.add_recipients(campaign_id, [(f"r{i}@example.com", {"name": f"R{i}"})
                                       for i in range(n)], start=0)
    store.open(campaign_id, total=n, send_at=None, report={})
    return campaign_id


def arrivals(smtp_server: SMTPTestServer) -> tuple[Counter[str], set[str]]:
    ids = Counter(str(r.message["Message-ID"]) for r in smtp_server.received)
    recipients = {a for r in smtp_server.received for a in r.recipients}
    return ids, recipients


def summary(redis_client: redis.Redis, campaign_id: str, smtp_server: SMTPTestServer) -> str:
    store = CampaignStore(redis_client)
    ids, recipients = arrivals(smtp_server)
    return (f"campaign {store.status(campaign_id)}, counts {store.ledger(campaign_id).counts()}, "
            f"{len(smtp_server.received)} messages received, {len(ids)} distinct Message-IDs, "
            f"{len(recipients)} distinct recipients")


def assert_all_sent_once(redis_client: redis.Redis, campaign_id: str, n: int,
                         smtp_server: SMTPTestServer, *, duplicates_at_most: int) -> None:
    ids, recipients = arrivals(smtp_server)
    counts = CampaignStore(redis_client).ledger(campaign_id).counts()
    figures = summary(redis_client, campaign_id, smtp_server)
    assert recipients == {f"r{i}@example.com" for i in range(n)}, f"lost recipients: {figures}"
    assert len(ids) == n, figures
    assert all(i.startswith(f"<{campaign_id}.") for i in ids), figures
    duplicates = sum(ids.values()) - len(ids)
    assert duplicates <= duplicates_at_most, f"{duplicates} duplicates: {figures}"
    assert counts["sent"] == n and counts["sending"] == 0 and counts["queued"] == 0, figures


@pytest.fixture
def group(tmp_path: Path, redis_url: str, smtp_server: SMTPTestServer) -> Iterator[WorkerProcesses]:
    workers = WorkerProcesses(tmp_path, redis_url, smtp_server.port, FAST_RECOVERY)
    yield workers
    workers.stop()


def launch(workers: WorkerProcesses, client: redis.Redis, smtp_server: SMTPTestServer, n: int,
           *, until_received: int, count: int = 1) -> tuple[str, list[Any]]:
    """Bulk workers in threads (as ``make run`` runs them) and beat; a campaign of *n*
    started and under way (*until_received* messages at the relay)."""
    smtp_server.handler.data_delay = 0.01  # a relay that takes a moment per message
    started = workers.start(queues="mail,bulk", pool="threads", concurrency=4, count=count)
    workers.start_beat()
    campaign_id = new_campaign(client, n)
    workers.producer.send_task("postroom.campaign.start", args=[campaign_id], queue="bulk")
    wait_until(lambda: len(smtp_server.received) >= until_received, 60,
               lambda: summary(client, campaign_id, smtp_server))
    return campaign_id, started


def completed(redis_client: redis.Redis, campaign_id: str) -> Callable[[], bool]:
    return lambda: CampaignStore(redis_client).status(campaign_id) == "completed"


@pytest.mark.parametrize("limits", [{}, {"MAIL_MAX_CONNECTIONS": "6", "MAIL_RATE_LIMIT": "400"}],
                         ids=["unlimited", "shared-limits"])
def test_a_worker_host_killed_mid_campaign_recovers_in_seconds(
        group: WorkerProcesses, smtp_server: SMTPTestServer, redis_client: redis.Redis,
        limits: dict[str, str]) -> None:
    n = 600
    group.env.update(limits)  # the same delivery loop runs with and without shared limits
    campaign_id, (doomed, _) = launch(group, redis_client, smtp_server, n, until_received=150,
                                      count=2)
    group.kill(doomed)  # every process of one worker host, without warning
    killed_at = len(smtp_server.received)
    took = wait_until(completed(redis_client, campaign_id), 60,
                      lambda: f"not completed 60 s after the kill: "
                              f"{summary(redis_client, campaign_id, smtp_server)}")
    time.sleep(0.5)  # anything still on its way arrives now
    assert killed_at < n - 100, f"the kill came too late ({killed_at} of {n} sent)"
    # at most one message in flight per session of the dead worker
    assert_all_sent_once(redis_client, campaign_id, n, smtp_server, duplicates_at_most=4)
    assert took < 30, f"recovery took {took:.1f} s"


def test_a_killed_pool_process_gives_its_batch_back_at_once(
        tmp_path: Path, redis_url: str, smtp_server: SMTPTestServer,
        redis_client: redis.Redis) -> None:
    n = 300
    slow_lease = FAST_RECOVERY | {"CLAIM_LEASE": "120", "RECONCILE_INTERVAL": "600"}
    workers = WorkerProcesses(tmp_path, redis_url, smtp_server.port, slow_lease)
    try:
        smtp_server.handler.data_delay = 0.01
        [main] = workers.start(queues="mail,bulk", pool="prefork", concurrency=1)
        campaign_id = new_campaign(redis_client, n)
        workers.producer.send_task("postroom.campaign.start", args=[campaign_id], queue="bulk")
        wait_until(lambda: len(smtp_server.received) >= 60, 60,
                   lambda: summary(redis_client, campaign_id, smtp_server))
        children = [int(p) for p in Path(f"/proc/{main.pid}/task/{main.pid}/children")
                    .read_text().split()]
        assert children, "no pool process to kill"
        for child in children:
            os.kill(child, signal.SIGKILL)
        took = wait_until(completed(redis_client, campaign_id), 60,
                          lambda: summary(redis_client, campaign_id, smtp_server))
        time.sleep(0.5)
        # the redelivered batch took its own claims back without waiting out the 120 s lease
        assert took < 30, f"the batch waited {took:.1f} s"
        assert_all_sent_once(redis_client, campaign_id, n, smtp_server, duplicates_at_most=1)
    finally:
        workers.stop()


def test_redis_restarted_with_aof_mid_campaign(
        tmp_path: Path, smtp_server: SMTPTestServer) -> None:
    n = 600
    server = EmbeddedRedis(tmp_path, appendonly=True).start()
    client = redis.Redis.from_url(server.url)
    workers = WorkerProcesses(tmp_path, server.url, smtp_server.port, FAST_RECOVERY)
    try:
        campaign_id, _ = launch(workers, client, smtp_server, n, until_received=150)
        server.restart()  # down for a moment; the AOF brings every key back
        restarted_at = len(smtp_server.received)
        wait_until(completed(client, campaign_id), 90,
                   lambda: f"not completed after the restart: "
                           f"{summary(client, campaign_id, smtp_server)}")
        time.sleep(0.5)
        assert restarted_at < n, "the restart came after the campaign"
        # per session: the message in flight, and the one whose record was on its way to Redis
        assert_all_sent_once(client, campaign_id, n, smtp_server, duplicates_at_most=8)
    finally:
        workers.stop()
        client.close()
        server.stop()


def test_redis_connections_killed_mid_campaign(
        group: WorkerProcesses, smtp_server: SMTPTestServer, redis_client: redis.Redis) -> None:
    n = 600
    campaign_id, _ = launch(group, redis_client, smtp_server, n, until_received=1)
    for threshold in (100, 250, 400):
        wait_until(lambda t=threshold: len(smtp_server.received) >= t, 60,  # type: ignore[misc]
                   lambda: summary(redis_client, campaign_id, smtp_server))
        killed = redis_client.client_kill_filter(_type="normal", skipme=True)
        assert killed, "no connection to kill"
    wait_until(completed(redis_client, campaign_id), 90,
               lambda: f"not completed: {summary(redis_client, campaign_id, smtp_server)}")
    time.sleep(0.5)
    # a dropped ledger connection is reopened and its unanswered requests sent again
    assert_all_sent_once(redis_client, campaign_id, n, smtp_server, duplicates_at_most=0)


def test_the_relay_down_for_a_while_delays_but_never_fails_a_campaign(
        group: WorkerProcesses, smtp_server: SMTPTestServer, redis_client: redis.Redis) -> None:
    n = 300
    campaign_id, _ = launch(group, redis_client, smtp_server, n, until_received=60)
    smtp_server.stop()  # the relay is gone: connections refused
    down_at = len(smtp_server.received)
    ledger = CampaignStore(redis_client).ledger(campaign_id)
    wait_until(lambda: ledger.counts()["deferred"] > 0, 30,
               lambda: f"nothing was deferred: {ledger.counts()}")
    time.sleep(60)  # a minute down: retried every few seconds, each retry finds no relay
    assert ledger.counts()["failed"] == 0, f"recipients failed while the relay was down: " \
                                           f"{ledger.counts()}"
    smtp_server.restart()
    wait_until(completed(redis_client, campaign_id), 90,
               lambda: f"not completed after the relay returned: "
                       f"{summary(redis_client, campaign_id, smtp_server)}")
    time.sleep(0.5)
    assert down_at < n
    assert_all_sent_once(redis_client, campaign_id, n, smtp_server, duplicates_at_most=4)
    attempts = [r.attempts for r in ledger.get(list(range(n)))]
    assert max(attempts) <= 2, f"sessions that never opened used up attempts: {Counter(attempts)}"
