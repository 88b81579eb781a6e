"""The delivery ledger's atomic transitions and claim leases, against the real Redis."""

from __future__ import annotations

import json
import time

import pytest
import redis

from tasks.delivery.leases import ClaimLease, LeaseBusy
from tasks.delivery.ledger import DeliveryLedger, Outcome, RecipientRecord
from tests.support.lease_support import lease


def make_ledger(client: redis.Redis, n: int) -> DeliveryLedger:
    ledger = DeliveryLedger(client, "test:ledger")
    ledger.add(RecipientRecord(index=0, email=f"r{i}@example.com") for i in range(n))
    return ledger


def test_status_indexes_made_later_inherit_the_ledgers_ttl(redis_client: redis.Redis) -> None:
    ledger = make_ledger(redis_client, 3)
    ledger.expire(600)
    with ClaimLease(redis_client, "token-a") as held:
        claim = ledger.claim([0, 1, 2], "token-a", held.run)
        ledger.finish("token-a", held.run,
                      [Outcome(0, "sent", 250),
                       Outcome(1, "deferred", 451, "later", retry_at=time.time() + 60),
                       Outcome(2, "failed", 550, "no such user")], max_attempts=5)
    ledger.move("failed", "queued")

    assert len(claim.claimed) == 3
    for status in ("sent", "deferred", "queued"):
        ttl = redis_client.ttl(ledger.index_prefix + status)
        assert 0 < ttl <= 600, (status, ttl)
    assert all(redis_client.ttl(name) > 0 for name in redis_client.keys("postroom:delivery:*"))


def test_a_durable_ledger_stays_durable(redis_client: redis.Redis) -> None:
    ledger = make_ledger(redis_client, 1)
    ledger.claim([0], "t", lease(redis_client))
    assert redis_client.ttl(ledger.index_prefix + "sending") == -1


def test_a_queued_recipient_costs_few_bytes(redis_client: redis.Redis) -> None:
    ledger = DeliveryLedger(redis_client, "test:compact")
    ledger.add([RecipientRecord(index=0, email="ada@example.com", vars={"name": "Ada"})])
    raw = redis_client.hget(ledger.records_key, "0")
    assert json.loads(raw) == {"e": "ada@example.com", "s": "queued", "v": {"name": "Ada"}}


def test_move_of_an_empty_or_exactly_paged_status(redis_client: redis.Redis) -> None:
    ledger = make_ledger(redis_client, 4)
    assert ledger.move("failed", "queued") == 0
    assert ledger.move("queued", "cancelled", page=2) == 4
    counts = ledger.counts()
    assert (counts["queued"], counts["cancelled"]) == (0, 4)
    assert [r.status for r in ledger.get([0, 1, 2, 3])] == ["cancelled"] * 4


def test_a_live_claim_is_busy_and_an_abandoned_one_is_taken_over(
        redis_client: redis.Redis) -> None:
    ledger = make_ledger(redis_client, 2)
    second = lease(redis_client, "worker-2")
    with ClaimLease(redis_client, "worker-1", ttl=60) as first:
        live = ledger.claim([0], "worker-1", first.run)
        blocked = ledger.claim([0], "worker-2", second)
        assert [r.index for r in live.claimed] == [0]
        assert blocked.claimed == [] and blocked.busy_until is not None
        assert blocked.busy_until > time.time() + 50

    # worker-1's lease is gone (its run ended without recording): its claim is abandoned
    assert ledger.orphaned() == [0]
    taken = ledger.claim([0], "worker-2", second)
    assert [r.index for r in taken.claimed] == [0]
    assert ledger.finish("worker-1", first.run, [Outcome(0, "sent", 250)],
                         max_attempts=5) == ["fenced:0"]
    assert ledger.finish("worker-2", second, [Outcome(0, "sent", 250)],
                         max_attempts=5) == ["sent"]
    assert ledger.counts()["sent"] == 1 and ledger.orphaned() == []


def test_only_the_relays_answers_use_up_attempts(redis_client: redis.Redis) -> None:
    ledger = make_ledger(redis_client, 1)
    run = lease(redis_client)
    for _ in range(5):  # the relay could not be reached: no attempt used, however often
        ledger.claim([0], "t", run)
        ledger.finish("t", run, [Outcome(0, "deferred", None, "connection refused", counted=False,
                                    retry_at=1.0)], max_attempts=3)
    [record] = ledger.get([0])
    assert (record.status, record.attempts, record.deferrals) == ("deferred", 0, 5)
    for expected in ("deferred", "deferred", "failed"):
        ledger.claim([0], "t", run)
        assert ledger.finish("t", run, [Outcome(0, "deferred", 451, "4.7.1 later", retry_at=1.0)],
                             max_attempts=3) == [expected]
    [record] = ledger.get([0])
    assert record.error == "retries exhausted after 3 attempts: 4.7.1 later"


def test_a_deferral_past_the_deadline_fails(redis_client: redis.Redis) -> None:
    ledger = make_ledger(redis_client, 1)
    run = lease(redis_client)
    ledger.claim([0], "t", run)
    assert ledger.finish("t", run, [Outcome(0, "deferred", None, "refused", counted=False)],
                         max_attempts=8, deadline=time.time() - 1) == ["failed"]
    [record] = ledger.get([0])
    assert "DELIVERY_MAX_AGE" in (record.error or "")


def test_deferred_recipients_are_scheduled_and_given_back(redis_client: redis.Redis) -> None:
    ledger = make_ledger(redis_client, 3)
    run = lease(redis_client)
    ledger.claim([0, 1, 2], "t", run)
    now = time.time()
    ledger.finish("t", run, [Outcome(0, "deferred", 451, "later", retry_at=now - 5),
                        Outcome(1, "deferred", 451, "later", retry_at=now + 300)],
                  max_attempts=5)
    assert ledger.due_for_retry(now) == [0]
    assert ledger.next_retry() == pytest.approx(now - 5)
    assert ledger.release("t", run, [2]) == 1  # claimed, never sent: queued again
    assert [r.status for r in ledger.get([0, 1, 2])] == ["deferred", "deferred", "queued"]
    ledger.claim([0], "t2", lease(redis_client, "t2"))
    assert ledger.due_for_retry(now + 600) == [1]  # a claim takes it off the schedule


def test_a_lease_is_held_by_one_live_run(redis_client: redis.Redis) -> None:
    with ClaimLease(redis_client, "batch-1", ttl=30):
        with pytest.raises(LeaseBusy) as busy:
            ClaimLease(redis_client, "batch-1", ttl=30).__enter__()
        assert busy.value.until > time.time() + 20
    with ClaimLease(redis_client, "batch-1", ttl=30):  # released: the next run takes it
        assert redis_client.exists("postroom:lease:batch-1")
    assert not redis_client.exists("postroom:lease:batch-1")


def test_a_lease_is_never_taken_from_a_holder_that_looks_like_a_dead_local_process(
        redis_client: redis.Redis) -> None:
    """Two hosts may share a host name and a pid: a holder's name proves nothing about it."""
    import socket
    import subprocess
    import sys
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    holder = f"{socket.gethostname()}:{dead.stdout.strip()}:abc"
    redis_client.set("postroom:lease:batch-2", holder, px=60_000)
    with pytest.raises(LeaseBusy):
        ClaimLease(redis_client, "batch-2", ttl=30).__enter__()
    assert redis_client.get("postroom:lease:batch-2").decode() == holder


def test_a_lease_is_renewed_while_its_run_lives(redis_client: redis.Redis) -> None:
    with ClaimLease(redis_client, "batch-3", ttl=0.6):
        time.sleep(1.5)  # more than twice the lease: only renewal keeps it
        assert redis_client.exists("postroom:lease:batch-3")


def test_a_stream_meeting_a_restarted_redis_stops_and_loads_its_scripts_again(
        redis_client: redis.Redis) -> None:
    from redis.exceptions import NoScriptError

    from tasks.delivery.ledger_stream import LedgerStream

    ledger = make_ledger(redis_client, 2)
    run = lease(redis_client)
    with LedgerStream(ledger) as stream:
        assert [r.index for r in stream.claim([0], "t", run).claimed] == [0]
    redis_client.script_flush()  # what a restart does to loaded scripts
    with pytest.raises(NoScriptError), LedgerStream(ledger) as stream:
        stream.claim([1], "t", run)
    with LedgerStream(ledger) as stream:  # the next batch loads them again
        assert [r.index for r in stream.claim([1], "t", run).claimed] == [1]
