"""The reconciler runs wherever a worker runs: with no beat at all, a real worker's own loop
finds a campaign batch whose task was lost and sends it, once."""

from __future__ import annotations

import collections
from typing import Any

import pytest
import redis
from flask import Flask

from tasks.campaigns.store import CampaignStore
from tests.reconciler.integration.test_reconcile import new_campaign
from tests.support.campaign_helpers import wait_for
from tests.support.smtp_server import SMTPTestServer

pytestmark = pytest.mark.worker


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"RECONCILE_INTERVAL": 0.5, "RECONCILE_IN_WORKERS": True}


def test_a_worker_without_beat_recovers_a_lost_batch(
        worker_app: Flask, celery_worker: object, redis_client: redis.Redis,
        smtp_server: SMTPTestServer) -> None:
    store = CampaignStore(redis_client)
    campaign_id = new_campaign(redis_client, 12)
    store.transition(campaign_id, ("queued",), "running")
    assert store.reserve_batch(campaign_id, size=100, ahead=1) is not None  # never published

    wait_for(lambda: store.status(campaign_id) == "completed", timeout=30)
    got = collections.Counter(r.recipients[0] for r in smtp_server.received)
    assert len(got) == 12 and set(got.values()) == {1}, got
    requeues = redis_client.hgetall("postroom:metrics:reconciler")
    assert int(requeues[b"batch_lease_gone"]) >= 1
