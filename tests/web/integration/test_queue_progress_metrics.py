"""What the queue alerts read: tasks finished per queue and state (counted by a real worker's
``task_postrun`` handler, one HINCRBY), and ``EXPECTED_WORKERS`` as a gauge per queue."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask import Flask

from tests.conftest import AUTH
from tests.support.smtp_server import SMTPTestServer
from tests.web.integration.test_operator_metrics import scrape, value
from web.config import ConfigError, expected_workers, from_environ


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"EXPECTED_WORKERS": "otp:2, bulk:3"}


def test_a_real_worker_counts_the_tasks_it_finishes_per_queue(
        worker_app: Flask, celery_worker: Any, smtp_server: SMTPTestServer) -> None:
    client = worker_app.test_client()
    before = value(scrape(client), "postroom_tasks_finished_total", queue="mail",
                   state="SUCCESS")
    assert before == 0
    for n in range(3):
        assert client.post("/api/messages", headers=AUTH, json={
            "to": f"reader{n}@example.com", "subject": "Hi", "body": "Hello"}).status_code == 202
    deadline = time.monotonic() + 20
    while value(scrape(client), "postroom_tasks_finished_total", queue="mail",
                state="SUCCESS") < 3:
        assert time.monotonic() < deadline, "three mail tasks were not counted within 20 s"
        time.sleep(0.2)
    samples = scrape(client)
    assert value(samples, "postroom_tasks_finished_total", queue="bulk", state="SUCCESS") == 0
    assert value(samples, "postroom_tasks_finished_total", queue="mail", state="FAILURE") == 0
    assert len(smtp_server.received) == 3


def test_expected_workers_is_a_gauge_per_queue(worker_app: Flask) -> None:
    samples = scrape(worker_app.test_client())
    assert value(samples, "postroom_workers_expected", queue="otp") == 2
    assert value(samples, "postroom_workers_expected", queue="bulk") == 3
    assert value(samples, "postroom_workers_expected", queue="mail") == 0  # not set


def test_expected_workers_is_parsed_strictly() -> None:
    assert from_environ({"EXPECTED_WORKERS": "otp:2,bulk:3"})["EXPECTED_WORKERS"] == {
        "otp": 2, "bulk": 3}
    assert from_environ({})["EXPECTED_WORKERS"] == {}
    for bad in ("otp", "otp:two", ":3", "otp:-1"):
        with pytest.raises(ConfigError, match="EXPECTED_WORKERS"):
            expected_workers("EXPECTED_WORKERS", bad)


def test_metrics_serves_only_cluster_wide_series(worker_app: Flask) -> None:
    """Every replica answers the same figures: no per-process series that differ by replica."""
    names = {name for name, _ in scrape(worker_app.test_client())}
    assert names and all(name.startswith("postroom_") for name in names), sorted(
        name for name in names if not name.startswith("postroom_"))
