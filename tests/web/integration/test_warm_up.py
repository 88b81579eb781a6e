"""A web process opens its connections before its first request (gunicorn's
``post_worker_init``), so no request pays for them; a Redis that does not answer
is logged, not raised, and the first request reports it as before."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import AUTH, app_config
from web import create_app
from web.testing import EmbeddedRedis, free_port
from web.warm import warm_up


def connected_clients(client: redis.Redis) -> int:
    clients: list[dict[str, Any]] = client.client_list()
    return len(clients)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of the test's own: its clients are the test's alone to count."""
    server = EmbeddedRedis(tmp_path).start()
    yield server
    server.stop()


def test_warm_up_opens_a_broker_and_a_redis_connection_per_thread(
        own_redis: EmbeddedRedis) -> None:
    config = app_config(own_redis.url, free_port())
    config["CELERY"] = {"task_always_eager": False}
    app = create_app(config)
    counter = redis.Redis.from_url(own_redis.url)
    before = connected_clients(counter)
    warm_up(app, 3)
    assert connected_clients(counter) >= before + 6  # 3 for the broker, 3 for the app
    response = app.test_client().post("/api/messages", headers=AUTH, json={
        "to": ["ada@example.com"], "subject": "Hello", "body": "Hi"})
    assert response.status_code == 202  # the warmed connections carry the request
    assert counter.llen("postroom:celery:mail") == 1
    counter.close()


def test_warm_up_with_redis_down_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    config = app_config(closed, free_port())
    config["CELERY"] = {"task_always_eager": False}
    app = create_app(config)
    with caplog.at_level(logging.WARNING, logger="web.warm"):
        warm_up(app, 2)
    [record] = [r for r in caplog.records if r.name == "web.warm"]
    assert record.getMessage().startswith(
        "web: could not open connections before the first request: ")
