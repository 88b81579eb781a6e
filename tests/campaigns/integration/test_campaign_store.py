"""The campaign store on a real Redis: status transitions, batch reservations, import."""

from __future__ import annotations

import time

import pytest
import redis

from tasks.bounces.store import SuppressionList
from tasks.campaigns.store import CampaignStore, TransitionRefused, batch_token
from tasks.delivery.leases import ClaimLease


def new_campaign(store: CampaignStore, n: int, *, send_at: float | None = None) -> str:
    campaign_id = store.begin(name="t", subject="s", body="b", html=None, sender=None,
                              base_url="http://x")
    store.add_recipients(campaign_id, [(f"r{i}@example.com", {}) for i in range(n)], start=0)
    store.open(campaign_id, total=n, send_at=send_at, report={})
    return campaign_id


def test_import_skips_duplicates_across_pages_and_records_suppressed(
        redis_client: redis.Redis) -> None:
    store = CampaignStore(redis_client)
    SuppressionList(redis_client).add("gone@example.com")
    campaign_id = store.begin(name="t", subject="s", body="b", html=None, sender=None,
                              base_url="http://x")
    assert store.get(campaign_id) is None  # importing: not visible yet
    following, first = store.add_recipients(
        campaign_id, [("a@example.com", {"n": 1}), ("A@example.com", {"n": 2}),
                      ("gone@example.com", {})], start=0)
    following, second = store.add_recipients(
        campaign_id, [("a@example.com", {}), ("b@example.com", {"n": 3})], start=following)
    assert (following, first.added, first.duplicates, first.suppressed) == (3, 2, 1, 1)
    assert (second.added, second.duplicates) == (1, 1)
    assert redis_client.ttl(store.ledger(campaign_id).records_key) > 0  # until opened

    assert store.open(campaign_id, total=3, send_at=None, report={}) == "queued"
    ledger = store.ledger(campaign_id)
    assert redis_client.ttl(ledger.records_key) == -1  # a durable record from now on
    assert not redis_client.exists(f"postroom:campaign:{campaign_id}:seen")
    records, _ = ledger.page()
    assert [(r.email, r.status, r.vars) for r in records] == [
        ("a@example.com", "queued", {"n": 1}), ("gone@example.com", "suppressed", {}),
        ("b@example.com", "queued", {"n": 3})]


def test_transitions_are_checked_atomically(redis_client: redis.Redis) -> None:
    store = CampaignStore(redis_client)
    campaign_id = new_campaign(store, 3, send_at=time.time() + 60)
    assert store.get(campaign_id).status == "scheduled"  # type: ignore[union-attr]
    assert store.due() == [] and store.due(time.time() + 120) == [campaign_id]
    with pytest.raises(TransitionRefused) as refused:
        store.transition(campaign_id, ("paused",), "running")
    assert refused.value.current == "scheduled"
    with pytest.raises(KeyError):
        store.transition("missing", ("queued",), "running")

    assert store.transition(campaign_id, ("scheduled",), "running", stamp="started_at") == \
        "scheduled"
    assert store.running() == [campaign_id] and store.due(time.time() + 120) == []
    started = store.get(campaign_id).started_at  # type: ignore[union-attr]
    store.transition(campaign_id, ("running",), "paused")
    store.transition(campaign_id, ("paused",), "running", stamp="started_at")
    assert store.get(campaign_id).started_at == started  # type: ignore[union-attr]
    assert store.running() == [campaign_id]

    assert not store.complete_if_done(campaign_id)  # three recipients still queued
    store.move_recipients(campaign_id, "queued", "cancelled")
    assert store.complete_if_done(campaign_id)
    finished = store.get(campaign_id)
    assert finished is not None and finished.status == "completed" and finished.finished_at
    assert store.running() == []


def test_batches_are_reserved_a_few_at_a_time(redis_client: redis.Redis) -> None:
    store = CampaignStore(redis_client)
    campaign_id = new_campaign(store, 250)
    assert store.reserve_batch(campaign_id, size=100, ahead=2) is None  # queued
    store.transition(campaign_id, ("queued",), "running")
    first = store.reserve_batch(campaign_id, size=100, ahead=2)
    second = store.reserve_batch(campaign_id, size=100, ahead=2)
    assert first is not None and second is not None
    assert (first[1:], second[1:]) == ((0, 99), (100, 199))
    assert store.reserve_batch(campaign_id, size=100, ahead=2) is None
    assert store.batches_in_flight(campaign_id) == 2

    store.release_batch(campaign_id, first[0])
    third = store.reserve_batch(campaign_id, size=100, ahead=2)
    assert third is not None and third[1:] == (200, 249)
    store.release_batch(campaign_id, second[0])
    assert store.reserve_batch(campaign_id, size=100, ahead=2) is None
    assert store.batch_indices(campaign_id, 200, 249, limit=50) == list(range(200, 250))

    store.transition(campaign_id, ("running",), "paused")
    assert store.reserve_batch(campaign_id, size=100, ahead=2) is None


def test_unreserved_counts_what_no_batch_has_been_cut_for(redis_client: redis.Redis) -> None:
    store = CampaignStore(redis_client)
    campaign_id = new_campaign(store, 250)
    store.transition(campaign_id, ("queued",), "running")
    assert store.unreserved(campaign_id) == 250
    first = store.reserve_batch(campaign_id, size=100, ahead=3)
    assert first is not None and store.unreserved(campaign_id) == 150
    store.reserve_batch(campaign_id, size=100, ahead=3)
    store.reserve_batch(campaign_id, size=100, ahead=3)
    # nothing after the cursor: what is still queued behind it, for the batch that goes back
    assert store.unreserved(campaign_id) == 250
    store.move_recipients(campaign_id, "queued", "cancelled")
    assert store.unreserved(campaign_id) == 0


def test_a_batch_whose_run_holds_no_lease_is_silent(redis_client: redis.Redis) -> None:
    store = CampaignStore(redis_client)
    campaign_id = new_campaign(store, 30)
    store.transition(campaign_id, ("queued",), "running")
    lost = store.reserve_batch(campaign_id, size=100, ahead=2)
    assert lost is not None and lost[1:] == (0, 29)
    slot = lost[0]
    assert store.silent_batches(campaign_id, dispatched_before=time.time() - 60) == []
    later = time.time() + 1
    assert store.silent_batches(campaign_id, dispatched_before=later) == [(slot, 0, 29)]
    with ClaimLease(redis_client, batch_token(campaign_id, slot)):  # its run is alive
        assert store.silent_batches(campaign_id, dispatched_before=later) == []
    store.release_batch(campaign_id, slot)
    assert store.silent_batches(campaign_id, dispatched_before=later) == []
    rescue = store.rescue_batch(campaign_id, 3, 7)
    assert store.silent_batches(campaign_id, dispatched_before=later) == [(rescue, 3, 7)]


def test_moving_exactly_a_page_of_recipients(redis_client: redis.Redis) -> None:
    store = CampaignStore(redis_client)
    campaign_id = new_campaign(store, 1000)
    assert store.move_recipients(campaign_id, "queued", "cancelled") == 1000
    assert store.move_recipients(campaign_id, "queued", "cancelled") == 0
    counts = store.ledger(campaign_id).counts()
    assert (counts["queued"], counts["cancelled"]) == (0, 1000)


def test_a_campaign_recipient_costs_redis_at_most_300_bytes(redis_client: redis.Redis) -> None:
    store = CampaignStore(redis_client)
    n = 20_000
    before = int(redis_client.info("memory")["used_memory"])
    campaign_id = store.begin(name="m", subject="Hello {{ name }}", body="Dear {{ name }}",
                              html=None, sender=None, base_url="http://x")
    for start in range(0, n, 1000):
        store.add_recipients(campaign_id, [(f"customer{i}@example.com", {"name": f"Customer {i}"})
                                           for i in range(start, start + 1000)], start=start)
    store.open(campaign_id, total=n, send_at=time.time() + 3600, report={})
    used = int(redis_client.info("memory")["used_memory"]) - before
    assert used / n <= 300, f"{used / n:.0f} bytes per recipient"


def test_a_finished_campaign_keeps_its_summary_and_lets_recipients_expire(
        redis_client: redis.Redis) -> None:
    store = CampaignStore(redis_client)
    campaign_id = new_campaign(store, 3)
    store.transition(campaign_id, ("queued",), "running")
    store.move_recipients(campaign_id, "queued", "cancelled")
    assert store.complete_if_done(campaign_id, retention=3600)
    ledger = store.ledger(campaign_id)
    assert 0 < redis_client.ttl(ledger.records_key) <= 3600
    assert redis_client.ttl(ledger.counts_key) == -1  # the summary stays
    assert redis_client.ttl(f"postroom:campaign:{campaign_id}") == -1
