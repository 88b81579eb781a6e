"""The delivery ledger's atomic transitions, against the real Redis."""

from __future__ import annotations

import redis

from tasks.stores.ledger import DeliveryLedger, RecipientRecord


def make_ledger(client: redis.Redis, n: int) -> DeliveryLedger:
    ledger = DeliveryLedger(client, "test:ledger")
    ledger.add(RecipientRecord(index=0, email=f"r{i}@example.com") for i in range(n))
    return ledger


def test_status_indexes_made_later_inherit_the_ledgers_ttl(redis_client: redis.Redis) -> None:
    ledger = make_ledger(redis_client, 3)
    ledger.expire(600)
    claim = ledger.claim([0, 1, 2], "token-a", lease_seconds=60)
    ledger.finish("token-a", [(0, "sent", 250, None), (1, "deferred", 451, "later"),
                              (2, "failed", 550, "no such user")], max_attempts=5)
    ledger.move("failed", "queued")

    assert len(claim.claimed) == 3
    for status in ("sent", "deferred", "queued"):
        ttl = redis_client.ttl(ledger.index_prefix + status)
        assert 0 < ttl <= 600, (status, ttl)
    assert all(redis_client.ttl(name) > 0 for name in redis_client.keys("postroom:*"))


def test_a_durable_ledger_stays_durable(redis_client: redis.Redis) -> None:
    ledger = make_ledger(redis_client, 1)
    ledger.claim([0], "t", lease_seconds=60)
    assert redis_client.ttl(ledger.index_prefix + "sending") == -1


def test_move_of_an_empty_or_exactly_paged_status(redis_client: redis.Redis) -> None:
    ledger = make_ledger(redis_client, 4)
    assert ledger.move("failed", "queued") == 0
    assert ledger.move("queued", "cancelled", page=2) == 4
    counts = ledger.counts()
    assert (counts["queued"], counts["cancelled"]) == (0, 4)
    assert [r.status for r in ledger.get([0, 1, 2, 3])] == ["cancelled"] * 4


def test_a_live_claim_is_busy_and_a_stale_one_can_be_taken_over(
        redis_client: redis.Redis) -> None:
    ledger = make_ledger(redis_client, 2)
    live = ledger.claim([0], "worker-1", lease_seconds=60)
    blocked = ledger.claim([0], "worker-2", lease_seconds=60)
    assert [r.index for r in live.claimed] == [0]
    assert blocked.claimed == [] and blocked.busy_until is not None

    dead = ledger.claim([1], "worker-1", lease_seconds=-1)  # its lease is already over
    taken = ledger.claim([1], "worker-2", lease_seconds=60)
    assert [r.index for r in dead.claimed] == [r.index for r in taken.claimed] == [1]
    assert taken.claimed[0].attempts == 2

    assert ledger.finish("worker-1", [(1, "sent", 250, None)], max_attempts=5) == []
    assert ledger.finish("worker-2", [(1, "sent", 250, None)], max_attempts=5) == ["sent"]
    assert ledger.counts()["sent"] == 1
