"""The client's retry rules: which calls are retried, the backoff with jitter, and the
server's ``Retry-After`` honoured (against the app over real HTTP)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from email.utils import formatdate

import httpx
import pytest
from flask import Flask

from postroom_client import NotFound, Postroom, RetryPolicy, TransportError
from postroom_client.transport import Transport, retry_after_seconds, retryable
from tests.conftest import AUTH
from tests.support.client_support import Front, serving

MISSING = "/api/messages/" + "0" * 32


@pytest.fixture
def front(app: Flask) -> Front:
    return Front(app.wsgi_app)


@pytest.fixture
def base_url(front: Front) -> Iterator[str]:
    with serving(front) as url:
        yield url


def test_only_calls_that_cannot_act_twice_are_retried() -> None:
    assert retryable("GET", {}) and retryable("get", {})
    assert retryable("POST", {"Idempotency-Key": "k"})
    assert not retryable("POST", {}) and not retryable("DELETE", {})


def test_backoff_draws_up_to_an_exponential_bound_with_a_cap() -> None:
    policy = RetryPolicy(base=0.5, cap=3.0)
    bounds: list[tuple[float, float]] = []

    def draw(low: float, high: float) -> float:
        bounds.append((low, high))
        return high

    assert [policy.delay(n, None, draw) for n in range(4)] == [0.5, 1.0, 2.0, 3.0]
    assert bounds == [(0.0, 0.5), (0.0, 1.0), (0.0, 2.0), (0.0, 3.0)]
    assert policy.delay(0, 12.0, draw) == 12.0  # the server's word wins
    assert policy.delay(0, 900.0, draw) == policy.max_retry_after


def test_retry_after_in_seconds_or_as_a_date() -> None:
    now = time.time()
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(formatdate(now + 20, usegmt=True), now=now) == \
        pytest.approx(20, abs=1)
    assert retry_after_seconds(formatdate(now - 20, usegmt=True), now=now) == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_the_servers_retry_after_is_the_wait(base_url: str, front: Front) -> None:
    front.retry_after = "2"
    front.failures.append(("GET", MISSING, "refuse"))
    slept: list[float] = []
    with httpx.Client(base_url=base_url) as http:
        transport = Transport(http, RetryPolicy(attempts=3), sleep=slept.append)
        with pytest.raises(NotFound):  # the second answer is the app's own
            transport.request("GET", MISSING, headers=AUTH)
    assert slept == [2.0]
    assert len(front.requests_to("GET", MISSING)) == 2


def test_without_retry_after_the_wait_is_the_backoff(base_url: str, front: Front) -> None:
    front.retry_after = None
    front.failures.extend([("GET", MISSING, "refuse")] * 2)
    slept: list[float] = []
    with httpx.Client(base_url=base_url) as http:
        transport = Transport(http, RetryPolicy(attempts=3, base=0.2, cap=10.0),
                              sleep=slept.append)
        with pytest.raises(NotFound):
            transport.request("GET", MISSING, headers=AUTH)
    assert len(slept) == 2 and 0 <= slept[0] <= 0.2 and 0 <= slept[1] <= 0.4


def test_a_server_that_never_answers_is_a_timeout_then_a_transport_error() -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) and says nothing
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with Postroom(url, "token", timeout=0.2,
                      retry=RetryPolicy(attempts=2, base=0.01, cap=0.01)) as postroom:
            with pytest.raises(TransportError, match="ReadTimeout"):
                postroom.get_message("0" * 32)
