"""The shared sending rate and SMTP session slots, against the real Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from tasks.delivery import runtime
from tasks.delivery.engine.session import BatchConnection, SMTPSettings
from tasks.delivery.pacing import RelayPacer
from tasks.delivery.throttle import SendRate, SessionSlots, SessionSlotTimeout
from tests.support.paths import ROOT
from tests.support.smtp_server import SMTPTestServer

# -- SendRate ---------------------------------------------------------------------------


def test_reservations_are_spaced_one_interval_apart(redis_client: redis.Redis) -> None:
    rate = SendRate(redis_client, 1.0)  # one slot a second; reserving does not wait
    waits = [rate.reserve() for _ in range(5)]
    assert waits[0] == 0.0
    for n, wait in enumerate(waits):
        assert n - 0.3 < wait <= n + 1e-6


def test_burst_lets_that_many_go_at_once(redis_client: redis.Redis) -> None:
    rate = SendRate(redis_client, 2.0, burst=3)
    waits = [rate.reserve() for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert 0.3 < waits[3] <= 0.5


def test_a_quiet_spell_does_not_bank_more_than_the_burst(redis_client: redis.Redis) -> None:
    rate = SendRate(redis_client, 20.0)
    rate.reserve()
    time.sleep(0.3)  # six slots go unused
    assert rate.reserve() == 0.0
    assert rate.reserve() > 0.02


def test_concurrent_callers_never_share_a_slot(redis_client: redis.Redis,
                                               redis_url: str) -> None:
    """Eight threads, two limiters (as if two hosts): every slot is its own, 2 s apart."""
    limiters = [SendRate(redis.Redis.from_url(redis_url), 0.5) for _ in range(2)]
    slots: list[float] = []
    lock = threading.Lock()

    def reserve(limiter: SendRate) -> None:
        for _ in range(5):
            asked = time.monotonic()
            wait = limiter.reserve()
            with lock:
                slots.append(asked + wait)

    threads = [threading.Thread(target=reserve, args=(limiters[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    slots.sort()
    assert len(slots) == 40
    gaps = [later - earlier for earlier, later in zip(slots, slots[1:], strict=False)]
    assert min(gaps) > 1.0  # 2 s, less the slack between asking and Redis's clock
    assert slots[-1] - slots[0] == pytest.approx(39 * 2.0, abs=1.0)


def test_pace_blocks_callers_to_the_rate(redis_client: redis.Redis) -> None:
    rate = SendRate(redis_client, 20.0)
    started = time.monotonic()

    def pace_five() -> None:
        for _ in range(5):
            rate.pace()

    threads = [threading.Thread(target=pace_five) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.monotonic() - started >= 9 / 20  # ten messages, the first one free


def test_rate_state_expires(redis_client: redis.Redis) -> None:
    rate = SendRate(redis_client, 1.0)
    for _ in range(3):
        rate.reserve()
    assert rate.key.startswith("postroom:")
    assert 2_000 < redis_client.pttl(rate.key) <= 4_000  # the reserved slots, plus a second


@pytest.mark.parametrize("options", [{"per_second": 0}, {"per_second": -1.0},
                                     {"per_second": 1.0, "burst": 0}])
def test_rate_refuses_nonsense(redis_client: redis.Redis, options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SendRate(redis_client, **options)  # type: ignore[arg-type]


# -- SessionSlots ---------------------------------------------------------------------


def test_slots_are_limited_and_come_back_on_release(redis_client: redis.Redis) -> None:
    slots = SessionSlots(redis_client, 2)
    first, second = slots.try_acquire(), slots.try_acquire()
    assert first and second and first != second
    assert slots.try_acquire() is None
    assert slots.in_use() == 2
    slots.release(first)
    assert slots.in_use() == 1
    third = slots.try_acquire()
    assert third is not None
    assert slots.try_acquire() is None
    slots.release(second)
    slots.release(third)
    assert slots.in_use() == 0


def test_headroom_leaves_slots_for_others(redis_client: redis.Redis) -> None:
    bulk = SessionSlots(redis_client, 3, headroom=1)
    taken = [bulk.try_acquire(), bulk.try_acquire()]
    assert all(taken)
    assert bulk.try_acquire() is None  # the last slot is left for others
    other = SessionSlots(redis_client, 3)
    last = other.try_acquire()
    assert last is not None
    assert other.try_acquire() is None
    other.release(last)
    for handle in taken:
        assert handle is not None
        bulk.release(handle)
    assert other.in_use() == 0


@pytest.mark.parametrize("options", [{"limit": 0}, {"limit": 2, "headroom": 2},
                                     {"limit": 2, "headroom": -1}, {"limit": 1, "lease": 0}])
def test_slots_refuse_nonsense(redis_client: redis.Redis, options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SessionSlots(redis_client, **options)  # type: ignore[arg-type]


def test_slots_key_has_a_ttl_beyond_the_lease(redis_client: redis.Redis) -> None:
    slots = SessionSlots(redis_client, 1, lease=5.0)
    handle = slots.acquire()
    assert slots.key.startswith("postroom:")
    assert 5_000 < redis_client.pttl(slots.key) <= 6_000
    slots.release(handle)


def test_acquire_gives_up_with_a_timeout_error(redis_client: redis.Redis) -> None:
    holder = SessionSlots(redis_client, 1)
    handle = holder.acquire()
    waiter = SessionSlots(redis_client, 1, wait_timeout=0.2)
    started = time.monotonic()
    with pytest.raises(SessionSlotTimeout, match="MAIL_MAX_CONNECTIONS") as caught:
        waiter.acquire()
    assert isinstance(caught.value, TimeoutError)
    assert time.monotonic() - started >= 0.2
    holder.release(handle)
    waiter.release(waiter.acquire())
    assert waiter.in_use() == 0


def test_a_held_slot_is_renewed_beyond_its_lease(redis_client: redis.Redis) -> None:
    holder = SessionSlots(redis_client, 1, lease=1.0)
    handle = holder.acquire()
    time.sleep(2.2)  # more than two leases
    assert SessionSlots(redis_client, 1).try_acquire() is None
    holder.release(handle)
    assert SessionSlots(redis_client, 1).try_acquire() is not None


HOLDER = """
import sys, time, redis
from tasks.delivery.throttle import SessionSlots
SessionSlots(redis.Redis.from_url(sys.argv[1]), 1, lease=1.0).acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_dead_holders_slot_comes_back_when_its_lease_runs_out(
        redis_client: redis.Redis, redis_url: str) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, redis_url], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        slots = SessionSlots(redis_client, 1, wait_timeout=5.0)
        time.sleep(1.5)  # alive, it keeps renewing its one-second lease
        assert slots.try_acquire() is None
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
    killed = time.monotonic()
    handle = slots.acquire()
    assert time.monotonic() - killed < 2.0  # within about one lease, not the 5 s timeout
    slots.release(handle)


def test_slots_never_exceed_the_limit_under_threads(redis_client: redis.Redis,
                                                    redis_url: str) -> None:
    limit = 3
    instances = [SessionSlots(redis.Redis.from_url(redis_url), limit, poll=0.005)
                 for _ in range(2)]
    lock = threading.Lock()
    holding = peak = done = 0
    seen_in_use: list[int] = []

    def session(slots: SessionSlots) -> None:
        nonlocal holding, peak, done
        for _ in range(10):
            handle = slots.acquire()
            with lock:
                holding += 1
                peak = max(peak, holding)
            seen_in_use.append(slots.in_use())
            time.sleep(0.005)
            with lock:
                holding -= 1
                done += 1
            slots.release(handle)

    threads = [threading.Thread(target=session, args=(instances[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert done == 80
    assert peak <= limit
    assert max(seen_in_use) <= limit
    assert peak == limit  # eight threads wanting sessions do fill every slot
    assert instances[0].in_use() == 0


# -- the gate around SMTP sessions, and the runtime ------------------------------------


def test_batch_connection_holds_a_slot_per_session(redis_client: redis.Redis,
                                                   smtp_server: SMTPTestServer) -> None:
    slots = SessionSlots(redis_client, 1)
    settings = SMTPSettings(server="127.0.0.1", port=smtp_server.port, max_emails=2, timeout=5)
    in_use: list[int] = []
    with BatchConnection(settings, gate=slots) as connection:
        for n in range(5):
            outcome = connection.send_data("a@postroom.test", [f"r{n}@example.com"], b"Hi\r\n")
            assert outcome[f"r{n}@example.com"].status == "sent"
            in_use.append(slots.in_use())
    assert in_use == [1] * 5
    assert slots.in_use() == 0
    assert connection.sessions_opened == smtp_server.session_count == 3


def test_a_session_whose_slot_cannot_be_renewed_closes_before_the_slot_runs_out(
        redis_client: redis.Redis, smtp_server: SMTPTestServer) -> None:
    """The slot's lease ran out behind the holder's back (renewals failed): the session it
    stood for is closed before the next message, so MAIL_MAX_CONNECTIONS holds at the relay."""
    slots = SessionSlots(redis_client, 1, lease=0.3)
    settings = SMTPSettings(server="127.0.0.1", port=smtp_server.port, timeout=5)
    with BatchConnection(settings, gate=slots) as connection:
        connection.send_data("a@postroom.test", ["r0@example.com"], b"Hi\r\n")
        handle = connection._gate_handle
        assert handle is not None and slots.trusted(handle)
        redis_client.zrem(slots.key, handle)  # another holder may take it now
        deadline = time.monotonic() + 5
        while slots.trusted(handle) and time.monotonic() < deadline:
            time.sleep(0.02)  # the renewer finds it gone
        assert not slots.trusted(handle)
        assert smtp_server.peak_sessions == 1
        outcome = connection.send_data("a@postroom.test", ["r1@example.com"], b"Hi\r\n")
        assert outcome["r1@example.com"].status == "sent"
        assert connection._gate_handle != handle  # on a session of a new slot
    assert smtp_server.session_count == 2
    assert smtp_server.peak_sessions == 1  # the old session closed before the new one opened


def test_a_slot_not_renewed_for_most_of_its_lease_is_not_trusted(
        redis_client: redis.Redis) -> None:
    slots = SessionSlots(redis_client, 1, lease=30.0)
    handle = slots.acquire()
    assert slots.trusted(handle)
    slots._held[handle] -= 30.0 * 0.61  # its last confirmed renewal was that long ago
    assert not slots.trusted(handle)
    slots.release(handle)
    assert not slots.trusted(handle)


def test_a_slot_reserved_for_a_message_never_sent_is_given_back(
        redis_client: redis.Redis, smtp_server: SMTPTestServer) -> None:
    slots = SessionSlots(redis_client, 1)
    settings = SMTPSettings(server="127.0.0.1", port=smtp_server.port, timeout=5)
    with BatchConnection(settings, gate=slots) as connection:
        connection.reserve()  # waits for the slot before any recipient is claimed
        assert slots.in_use() == 1
    assert slots.in_use() == 0
    assert smtp_server.session_count == 0


def test_no_free_slot_defers_the_recipients(redis_client: redis.Redis,
                                            smtp_server: SMTPTestServer) -> None:
    busy = SessionSlots(redis_client, 1)
    handle = busy.acquire()
    settings = SMTPSettings(server="127.0.0.1", port=smtp_server.port, timeout=5)
    gate = SessionSlots(redis_client, 1, wait_timeout=0.1)
    with BatchConnection(settings, gate=gate) as connection:
        outcome = connection.send_data("a@postroom.test", ["ada@example.com"], b"Hi\r\n")
    assert outcome["ada@example.com"].status == "deferred"
    assert "MAIL_MAX_CONNECTIONS" in (outcome["ada@example.com"].error or "")
    assert smtp_server.session_count == 0
    busy.release(handle)
    assert busy.in_use() == 0


@pytest.mark.parametrize("config_overrides", [{}])
def test_runtime_has_no_limits_unless_configured(app: Flask) -> None:
    with app.app_context():
        assert runtime.relay_pacer().ceiling is None  # unlimited until a relay throttles
        assert runtime.session_gate() is None
        assert runtime.session_gate(bulk=True) is None


@pytest.mark.parametrize("config_overrides", [{"MAIL_MAX_CONNECTIONS": 1}])
def test_a_single_session_is_shared_by_bulk_too(app: Flask) -> None:
    with app.app_context():
        gate = runtime.session_gate(bulk=True)
    assert isinstance(gate, SessionSlots)
    assert (gate.limit, gate.headroom) == (1, 0)


@pytest.mark.parametrize("config_overrides",
                         [{"MAIL_RATE_LIMIT": 5.0, "MAIL_MAX_CONNECTIONS": 2}])
def test_runtime_limits_follow_the_config(app: Flask, redis_client: redis.Redis) -> None:
    with app.app_context():
        pacer = runtime.relay_pacer()
        gate = runtime.session_gate()
    assert pacer.ceiling == 5.0 and isinstance(gate, SessionSlots)
    assert (gate.limit, gate.headroom) == (2, 0)
    assert gate.wait_timeout == 4 * 5.0  # four times MAIL_TIMEOUT
    with app.app_context():
        bulk_gate = runtime.session_gate(bulk=True)
    assert isinstance(bulk_gate, SessionSlots)
    assert (bulk_gate.limit, bulk_gate.headroom) == (2, 1)
    assert pacer.reserve("relay:25") == 0.0
    assert 0.19 <= pacer.reserve("relay:25") <= 0.2  # the second slot is 0.2 s after the first
    assert 0.39 <= RelayPacer(redis_client, 5.0).reserve("relay:25") <= 0.4  # and shared
    assert RelayPacer(redis_client, 5.0).reserve("other:25") == 0.0  # per relay



@pytest.mark.parametrize("config_overrides",
                         [{"MAIL_RATE_LIMIT": 12.5, "MAIL_MAX_CONNECTIONS": 3}])
def test_metrics_show_the_limits_and_open_sessions(client: FlaskClient,
                                                   redis_client: redis.Redis) -> None:
    slots = SessionSlots(redis_client, 3)
    handles = [slots.acquire(), slots.acquire()]
    text = client.get("/metrics").get_data(as_text=True)
    assert "postroom_mail_rate_limit 12.5" in text
    assert "postroom_mail_max_connections 3.0" in text
    assert "postroom_smtp_sessions_open 2.0" in text
    for handle in handles:
        slots.release(handle)
    assert "postroom_smtp_sessions_open 0.0" in client.get("/metrics").get_data(as_text=True)
