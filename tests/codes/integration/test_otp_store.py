"""The OTP store against a real Redis: codes, HMACs, atomic consumption, lock-out, TTLs."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
import redis

from tasks.codes.store import OTPPolicy, OTPStore, normalise_code
from tests.support.otp_support import Clock

POLICY = OTPPolicy(secret_key=b"store-test-key", length=6, ttl=600, max_attempts=5,
                   record_ttl=3600)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(redis_client: redis.Redis, clock: Clock) -> OTPStore:
    return OTPStore(redis_client, POLICY, now=clock)


def issued(store: OTPStore, email: str = "ada@example.com") -> tuple[str, str]:
    request = store.create(email)
    code = store.issue(request.id)
    assert code is not None
    return request.id, code


def test_codes_are_digits_of_the_configured_length_with_leading_zeros() -> None:
    codes = [POLICY.new_code() for _ in range(3000)]
    assert all(len(code) == 6 and code.isdigit() for code in codes)
    assert any(code.startswith("0") for code in codes)
    assert len(set(codes)) > 2900
    eight = OTPPolicy(secret_key=b"k", length=8)
    assert all(len(eight.new_code()) == 8 for _ in range(100))


def test_a_code_with_a_leading_zero_verifies(store: OTPStore) -> None:
    for _ in range(500):
        request_id, code = issued(store)
        if code.startswith("0"):
            break
    assert code.startswith("0")
    assert store.verify(request_id, code) == "verified"


def test_only_the_hmac_is_stored(store: OTPStore, redis_client: redis.Redis) -> None:
    request_id, code = issued(store)
    raw = redis_client.get(OTPStore.record_key(request_id))
    assert raw is not None and code.encode() not in raw
    record = store.get(request_id)
    assert record is not None
    assert record.code_hash == POLICY.digest(request_id, code)
    other = OTPPolicy(secret_key=b"another-key")
    assert other.digest(request_id, code) != record.code_hash


def test_concurrent_correct_codes_verify_exactly_once(store: OTPStore) -> None:
    request_id, code = issued(store)
    barrier = threading.Barrier(8)
    verdicts: list[str] = []

    def submit() -> None:
        barrier.wait()
        verdicts.append(store.verify(request_id, code))

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(verdicts) == {"verified": 1, "closed": 7}


def test_concurrent_wrong_codes_are_all_counted(store: OTPStore) -> None:
    request_id, code = issued(store)
    wrong = f"{(int(code) + 1) % 10 ** 6:06d}"
    barrier = threading.Barrier(10)
    verdicts: list[str] = []

    def submit() -> None:
        barrier.wait()
        verdicts.append(store.verify(request_id, wrong))

    threads = [threading.Thread(target=submit) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Counter(verdicts) == {"wrong": 4, "locked": 1, "closed": 5}
    assert store.verify(request_id, code) == "closed"
    record = store.get(request_id)
    assert record is not None and record.code_hash is None


def test_expiry_follows_the_clock(store: OTPStore, clock: Clock) -> None:
    request_id, code = issued(store)
    clock.advance(POLICY.ttl)
    assert store.verify(request_id, code) == "expired"
    record = store.get(request_id)
    assert record is not None and record.status == "expired" and record.code_hash is None


def test_an_unsent_request_expires_instead_of_sending_late(store: OTPStore,
                                                           clock: Clock) -> None:
    request = store.create("ada@example.com")
    clock.advance(POLICY.ttl + 1)
    assert store.issue(request.id) is None
    record = store.get(request.id)
    assert record is not None and record.status == "expired"


def test_a_retry_draws_a_fresh_code(store: OTPStore) -> None:
    request_id, first = issued(store)
    store.record_delivery(request_id, "deferred", 451, "try later")
    second = store.issue(request_id)
    assert second is not None
    record = store.get(request_id)
    assert record is not None and record.code_hash == POLICY.digest(request_id, second)
    if second != first:
        assert store.verify(request_id, first) == "wrong"
    assert store.verify(request_id, second) == "verified"


def test_status_changes_are_stamped(store: OTPStore, clock: Clock) -> None:
    request = store.create("ada@example.com")
    clock.advance(1)
    store.issue(request.id)
    clock.advance(1)
    store.record_delivery(request.id, "sent", 250, None)
    record = store.get(request.id)
    assert record is not None
    start = request.created_at
    assert record.history == [{"status": "queued", "at": start},
                              {"status": "sending", "at": start + 1},
                              {"status": "sent", "at": start + 2}]
    assert record.updated_at == start + 2


def test_a_closed_request_keeps_its_status(store: OTPStore) -> None:
    request_id, code = issued(store)
    assert store.verify(request_id, code) == "verified"
    store.record_delivery(request_id, "sent", 250, None)
    record = store.get(request_id)
    assert record is not None and record.status == "verified"
    assert store.issue(request_id) is None


def test_every_key_has_a_ttl(store: OTPStore, redis_client: redis.Redis) -> None:
    request_id, _ = issued(store)
    store.record_delivery(request_id, "sent", 250, None)
    store.create("ada@example.com")
    # the reconciler's watch list is durable: its entries go when their delivery settles
    names = [name.decode() for name in redis_client.scan_iter("*")
             if name != b"postroom:watch"]
    assert names and all(name.startswith("postroom:") for name in names)
    for name in names:
        assert 0 < redis_client.ttl(name) <= POLICY.record_ttl, name


def test_unknown_and_malformed(store: OTPStore) -> None:
    assert store.verify("nope", "123456") == "unknown"
    assert store.get("nope") is None
    with pytest.raises(ValueError):
        store.verify("nope", "12345")
    assert normalise_code(" 12 34\t56 ", 6) == "123456"
    for bad in ("12345", "1234567", "12345a", "١٢٣٤٥٦", "+12345", ""):
        with pytest.raises(ValueError):
            normalise_code(bad, 6)
