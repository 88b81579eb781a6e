"""Pausing on a real Redis: ``pausing`` while a batch holds its claim lease, then ``paused``;
drafts are neither listed as due nor watched until started."""

from __future__ import annotations

import time

import redis

from tasks.campaigns.store import CampaignStore, batch_token
from tasks.delivery.leases import ClaimLease
from tasks.delivery.watch_list import WATCH_KEY
from tests.campaigns.integration.test_campaign_store import new_campaign


def test_pausing_lasts_while_a_batch_holds_its_lease(redis_client: redis.Redis) -> None:
    store = CampaignStore(redis_client)
    campaign_id = new_campaign(store, 30)
    store.transition(campaign_id, ("queued",), "running")
    sending = store.reserve_batch(campaign_id, size=10, ahead=2)
    waiting = store.reserve_batch(campaign_id, size=10, ahead=2)
    assert sending is not None and waiting is not None
    store.transition(campaign_id, ("running",), "pausing")
    assert campaign_id in store.running()  # the reconciler still looks at it
    with ClaimLease(redis_client, batch_token(campaign_id, sending[0]), 10.0):
        assert not store.settle_pause(campaign_id)  # a batch is sending
        assert store.status(campaign_id) == "pausing"
    # the batch still waiting on the broker holds no lease: it sends nothing once it runs
    assert store.settle_pause(campaign_id)
    assert store.status(campaign_id) == "paused" and campaign_id not in store.running()
    assert not store.settle_pause(campaign_id)  # once only


def test_a_draft_waits_for_its_start(redis_client: redis.Redis) -> None:
    store = CampaignStore(redis_client)
    campaign_id = store.begin(name="d", subject="s", body="b", html=None, sender=None,
                              base_url="http://x")
    store.add_recipients(campaign_id, [("a@example.com", {})], start=0)
    later = time.time() - 1  # its time passed while it was a draft
    assert store.open(campaign_id, total=1, send_at=later, report={}, draft=True) == "draft"
    assert store.due() == [] and store.running() == []
    assert redis_client.zscore(WATCH_KEY, f"campaign:{campaign_id}") is None
    store.queue_draft(campaign_id)
    assert store.status(campaign_id) == "queued"
    assert redis_client.zscore(WATCH_KEY, f"campaign:{campaign_id}") is not None
