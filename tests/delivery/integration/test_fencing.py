"""Fenced claims against the real Redis and a real SMTP server: a run that lost its lease
records nothing, hands nothing back and stops sending; the run that took over owns the
claims; the reconciler takes turns and never re-enqueues a batch waiting in the broker."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from flask import Flask

from tasks.campaigns.store import CampaignStore, batch_token
from tasks.campaigns.tasks import send_campaign_batch
from tasks.delivery.counters import LEASES_KEY as TAKEOVERS_KEY
from tasks.delivery.engine.compose import Composer, Draft
from tasks.delivery.engine.session import BatchConnection, SMTPSettings
from tasks.delivery.leases import (
    ClaimLease,
    LeaseBusy,
    process_id,
    provably_dead,
    renew,
    run_id,
)
from tasks.delivery.ledger import LEASE_PREFIX, DeliveryLedger, Outcome, RecipientRecord
from tasks.delivery.service import BatchOptions, MessageFate, Outgoing, run_batch
from tasks.reconciler.service import Reconciler, take_turn
from tasks.workers.waiting import read_waiting
from tests.reconciler.integration.test_reconcile import new_campaign
from tests.support.lease_support import lease
from tests.support.smtp_server import SMTPTestServer


def make_ledger(client: redis.Redis, n: int, name: str = "test:fenced") -> DeliveryLedger:
    ledger = DeliveryLedger(client, name)
    ledger.add(RecipientRecord(index=0, email=f"r{i}@example.com") for i in range(n))
    return ledger


def test_a_run_whose_lease_was_taken_over_can_record_claim_and_give_back_nothing(
        redis_client: redis.Redis) -> None:
    ledger = make_ledger(redis_client, 4)
    first = lease(redis_client, "batch", ttl=0.05)
    assert [r.index for r in ledger.claim([0, 1, 2], "batch", first).claimed] == [0, 1, 2]
    time.sleep(0.1)  # the first run's lease ran out (its host was cut off, or paused)
    second = "other-host:proc:rerun"
    redis_client.set(LEASE_PREFIX + "batch", second, px=30_000)
    taken = ledger.claim([0, 1, 2], "batch", second)  # the rerun takes the same token's claims
    assert [r.index for r in taken.claimed] == [0, 1, 2]
    assert ledger.finish("batch", second, [Outcome(0, "sent", 250)], max_attempts=5) == ["sent"]

    # the first run comes back: every script refuses it
    assert ledger.finish("batch", first, [Outcome(0, "deferred", 451, "later"),
                                          Outcome(1, "sent", 250)],
                         max_attempts=5) == ["fenced:0", "fenced:1"]
    assert ledger.release("batch", first, [1, 2]) == -1
    assert ledger.claim([3], "batch", first).fenced

    records = ledger.get([0, 1, 2, 3])
    assert [r.status for r in records] == ["sent", "sending", "sending", "queued"]
    assert ledger.counts()["sent"] == 1 and ledger.counts()["sending"] == 2
    assert ledger.finish("batch", second, [Outcome(1, "sent", 250), Outcome(2, "sent", 250)],
                         max_attempts=5) == ["sent", "sent"]


def test_identities_are_unique_without_the_operators_help() -> None:
    runs = {run_id() for _ in range(100)}
    assert len(runs) == 100
    assert all(run.startswith(process_id() + ":") for run in runs)
    host, proc = process_id().rsplit(":", 1)
    assert host and len(proc) == 12 and not proc.isdigit()


def test_a_live_lease_is_never_taken_and_a_run_out_one_is_counted_as_taken_over(
        redis_client: redis.Redis) -> None:
    with ClaimLease(redis_client, "b1", ttl=30):
        with pytest.raises(LeaseBusy):
            ClaimLease(redis_client, "b1", ttl=30).__enter__()
    assert not redis_client.exists(LEASE_PREFIX + "b1")
    assert redis_client.hget(TAKEOVERS_KEY, "taken_over") is None  # it ended properly

    gone = ClaimLease(redis_client, "b2", ttl=0.2).__enter__()
    gone._held.lost = True  # type: ignore[union-attr]  # its renewals stop, as in a dead host
    from tasks.delivery import leases
    leases._keeper.remove(gone.run)
    time.sleep(0.35)
    with ClaimLease(redis_client, "b2", ttl=30) as rerun:
        assert redis_client.get(LEASE_PREFIX + "b2").decode() == rerun.run
    assert int(redis_client.hget(TAKEOVERS_KEY, "taken_over")) == 1


def test_a_run_whose_lease_runs_out_is_not_usable_and_one_taken_over_learns_it(
        redis_client: redis.Redis) -> None:
    with ClaimLease(redis_client, "b3", ttl=30) as held:
        assert held.usable()
        redis_client.set(LEASE_PREFIX + "b3", "someone-else", px=30_000)
        held._held.confirmed -= 20  # type: ignore[union-attr]  # a renewal is overdue
        assert not held.usable()  # its own renewal finds the lease gone
        assert held.lost


class _Drafts:
    def __init__(self) -> None:
        self.composer = Composer(message_id_domain="postroom.test")

    def draft_for(self, claimed: list[RecipientRecord]) -> Draft:
        [record] = claimed
        return Draft(sender="noreply@postroom.test", to=[record.email], subject="Hi",
                     text="Hello", message_id=f"<fenced.{record.index}@postroom.test>")


def _settings(smtp_server: SMTPTestServer) -> SMTPSettings:
    return SMTPSettings(server="127.0.0.1", port=smtp_server.port, timeout=5.0)


def test_a_run_taken_over_mid_batch_stops_before_its_next_message(
        redis_client: redis.Redis, smtp_server: SMTPTestServer) -> None:
    ledger = make_ledger(redis_client, 20, "test:takeover")
    drafts = _Drafts()
    taken_after = 3

    def observe(sent: MessageFate) -> None:
        if len(smtp_server.received) == taken_after:  # another host took the lease over
            redis_client.set(LEASE_PREFIX + "takeover", "other-host:p:r", px=30_000)

    options = BatchOptions(token="takeover", lease=30, observe=observe)
    with BatchConnection(_settings(smtp_server)) as connection:
        report = run_batch(ledger, [Outgoing([i], drafts.draft_for) for i in range(20)],
                           connection, drafts.composer, options)

    assert report.fenced
    # past the take-over: the message in flight, and at most the one sent while the refusal
    # of the first was still on its way back (a run waits for all but its last outcome's
    # reply before each message)
    assert taken_after <= len(smtp_server.received) <= taken_after + 2
    counts = ledger.counts()
    assert counts["sent"] == taken_after  # what it sent after losing the lease is not its own
    # what it had claimed and not sent is not given back: the run holding the lease owns it
    assert (counts["sending"], counts["queued"]) == (20 - taken_after, 0)
    assert int(redis_client.hget(TAKEOVERS_KEY, "fenced") or 0) >= 1


def test_the_reconciler_runs_once_per_interval_whoever_asks(redis_client: redis.Redis) -> None:
    assert take_turn(redis_client, 0.3)
    assert not take_turn(redis_client, 0.3)  # another worker, same interval
    time.sleep(0.35)
    assert take_turn(redis_client, 0.3)


def test_a_batch_waiting_in_the_broker_is_left_alone_and_a_lost_one_is_sent_again(
        worker_app: Flask, redis_client: redis.Redis) -> None:
    celery_app = worker_app.extensions["celery"]
    store = CampaignStore(redis_client)
    campaign_id = new_campaign(redis_client, 5)
    store.transition(campaign_id, ("queued",), "running")
    reserved = store.reserve_batch(campaign_id, size=100, ahead=1)
    assert reserved is not None
    slot, first, last = reserved
    with worker_app.app_context():
        send_campaign_batch.delay(campaign_id, first, last, slot)  # no worker: it waits
        queue = _queue_key(celery_app)
        assert redis_client.llen(queue) == 1
        later = time.time() + 60
        waiting = read_waiting(celery_app, ["bulk"])
        assert waiting is not None and waiting.has_batch(send_campaign_batch.name, campaign_id,
                                                         slot)
        found = Reconciler(redis_client, grace=4, waiting=waiting).run(now=later)
        assert found.batches == 0 and redis_client.llen(queue) == 1

        redis_client.rpop(queue)  # a worker took it and died with it (unacked)
        found = Reconciler(redis_client, grace=4,
                           waiting=read_waiting(celery_app, ["bulk"])).run(now=later)
        assert found.batches == 1 and found.reasons == {"batch_lease_gone": 1}
        assert redis_client.llen(queue) == 1  # sent again

        redis_client.rpop(queue)
        redis_client.set(LEASE_PREFIX + batch_token(campaign_id, slot), "live-run", px=30_000)
        found = Reconciler(redis_client, grace=4,
                           waiting=read_waiting(celery_app, ["bulk"])).run(now=later)
        assert found.batches == 0  # its run is alive: judged by its lease alone


def _queue_key(celery_app: Any) -> str:
    prefix = celery_app.conf.broker_transport_options["global_keyprefix"]
    return f"{prefix}bulk"


def test_metrics_count_take_overs_fenced_records_and_requeues_by_reason(
        client: Any, redis_client: redis.Redis) -> None:
    ledger = make_ledger(redis_client, 1, "test:metrics")
    stale = lease(redis_client, "m", ttl=0.05)
    ledger.claim([0], "m", stale)
    time.sleep(0.1)
    with ClaimLease(redis_client, "m", ttl=30) as rerun:
        ledger.claim([0], "m", rerun.run)
        assert ledger.finish("m", stale, [Outcome(0, "sent", 250)],
                             max_attempts=5) == ["fenced:0"]
        rerun.fenced()  # what a run does when a script refuses it
    redis_client.hincrby("postroom:metrics:reconciler", "batch_lease_gone", 2)

    text = client.get("/metrics").get_data(as_text=True)
    assert 'postroom_claim_leases_total{event="fenced"} 1.0' in text
    assert 'postroom_reconciler_requeues_total{reason="batch_lease_gone"} 2.0' in text
    assert 'postroom_reconciler_requeues_total{reason="retry_overdue"} 0.0' in text


def test_a_lease_left_by_an_ended_process_of_this_kernel_is_taken_at_once(
        redis_client: redis.Redis) -> None:
    import subprocess
    import sys
    ended = subprocess.run([sys.executable, "-c",
                            "from tasks.delivery.leases import run_id; print(run_id())"],
                           capture_output=True, text=True, check=True).stdout.strip()
    redis_client.set(LEASE_PREFIX + "local", ended, px=60_000)
    with ClaimLease(redis_client, "local", ttl=30) as lease_now:
        assert redis_client.get(LEASE_PREFIX + "local").decode() == lease_now.run


def test_a_holder_with_this_hosts_name_and_pid_on_another_machine_keeps_its_lease(
        redis_client: redis.Redis) -> None:
    import os
    mine = run_id()
    identity, _, proof = mine.partition("|")
    boot, _, rest = proof.partition(":")
    twin = f"{identity}|{'0' * len(boot)}:{rest}"  # same host name, pid and namespace name
    assert str(os.getpid()) in twin
    redis_client.set(LEASE_PREFIX + "twin", twin, px=60_000)
    with pytest.raises(LeaseBusy):
        ClaimLease(redis_client, "twin", ttl=30).__enter__()
    live = run_id()  # a live process of this kernel (this one, with a run still held)
    with ClaimLease(redis_client, "alive", ttl=30) as holder:
        assert holder.run != live
        with pytest.raises(LeaseBusy):
            ClaimLease(redis_client, "alive", ttl=30).__enter__()


def test_a_renewal_that_finds_an_ended_lease_gone_counts_no_loss(
        redis_client: redis.Redis) -> None:
    """The keeper renews what it held a moment ago; a run that ended meanwhile (a message
    task takes milliseconds) gave its lease back and was not taken over."""
    redis_client.delete(TAKEOVERS_KEY)
    claim = ClaimLease(redis_client, "message:ended-run", 8.0)
    with claim:
        held = claim._held
    assert held is not None
    renew([held])  # the keeper's snapshot, renewed after the run gave the lease back
    assert redis_client.hget(TAKEOVERS_KEY, "lost") is None
    assert not claim.lost


def test_a_forked_process_proves_its_own_life_not_its_parents() -> None:
    """The proof in a run id is read once per process, and again in a forked child."""
    import os

    mine = run_id()
    assert mine.split("|")[1] == run_id().split("|")[1]  # the same process, the same proof
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: its own run id, then gone
        os.write(write_end, run_id().encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(child, 0)
    theirs = os.read(read_end, 4096).decode()
    os.close(read_end)
    assert mine.split("|")[1].split(":")[-2] == str(os.getpid())
    assert theirs.split("|")[1].split(":")[-2] == str(child)
    assert provably_dead(theirs)  # it ended: its own pid and start time say so
