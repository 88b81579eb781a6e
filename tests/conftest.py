"""Fixtures: a real Redis, a real SMTP server, the app, eager Celery, a real worker."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server

from cli.embedded import CaptureServer
from tasks.delivery.runtime import SESSION_POOL
from tests.support.smtp_server import SMTPTestServer
from web import create_app
from web.testing import EmbeddedRedis, free_port

API_TOKEN = "test-token-7f3a"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server for the session: ``POSTROOM_TEST_REDIS_URL`` or an embedded one."""
    external = os.environ.get("POSTROOM_TEST_REDIS_URL")
    if external:
        yield external
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def smtp_session_server() -> Iterator[SMTPTestServer]:
    server = SMTPTestServer().start()
    yield server
    server.stop()


@pytest.fixture
def capture_server(tmp_path: Path) -> Iterator[CaptureServer]:
    """The embedded capture server ``postroom dev`` runs, feeding the Outbox page."""
    server = CaptureServer(tmp_path / "outbox", free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def smtp_server(smtp_session_server: SMTPTestServer) -> Iterator[SMTPTestServer]:
    """The SMTP server, emptied, with no session left open and behaving normally at the
    start of each test."""
    smtp_session_server.close_leftover_sessions()
    smtp_session_server.reset()
    yield smtp_session_server
    smtp_session_server.reset()


def app_config(redis_url: str, smtp_port: int, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "TESTING": True,
        "SECRET_KEY": "test-secret-key",
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": smtp_port,
        "MAIL_DEFAULT_SENDER": "Postroom <noreply@postroom.test>",
        "MAIL_TIMEOUT": 5.0,
        "MAIL_SUPPRESS_SEND": False,  # these tests read the mail back from the SMTP server
        "API_TOKENS": [API_TOKEN],
        "DELIVERY_BACKOFF_BASE": 0.05,
        "DELIVERY_BACKOFF_CAP": 0.2,
        "RECONCILE_IN_WORKERS": False,  # tests that want the workers' own reconciler say so
        "CELERY": {"task_always_eager": True, "task_eager_propagates": True},
    }
    config.update(overrides)
    # every test says whether Celery is eager (web.testing_mode warns otherwise)
    config["CELERY"] = {"task_always_eager": False, **config["CELERY"]}
    return config


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    """Override in a test module to change the app's configuration."""
    return {}


def close_kept_sessions(app: Flask) -> None:
    """QUIT the SMTP sessions the app's tasks kept open, so the next test starts with none."""
    pool = app.extensions.get(SESSION_POOL)
    if pool is not None:
        pool.close_all()


@pytest.fixture
def app(redis_client: redis.Redis, redis_url: str, smtp_server: SMTPTestServer,
        config_overrides: dict[str, Any]) -> Iterator[Flask]:
    """The app with Celery eager: tasks run inside the request, against real servers."""
    app = create_app(app_config(redis_url, smtp_server.port, **config_overrides))
    yield app
    close_kept_sessions(app)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> Any:
    return app.test_cli_runner()


@pytest.fixture
def worker_app(redis_client: redis.Redis, redis_url: str, smtp_server: SMTPTestServer,
               config_overrides: dict[str, Any], tmp_path: Path) -> Iterator[Flask]:
    """The app with a real broker: tasks go through Redis to a worker."""
    config = app_config(redis_url, smtp_server.port, **config_overrides)
    config["CELERY"] = {"task_always_eager": False, "broker_transport_options": {
        "visibility_timeout": 60, "global_keyprefix": f"postroom:celery:{tmp_path.name}:"}}
    app = create_app(config)
    yield app
    close_kept_sessions(app)


@pytest.fixture
def celery_worker(worker_app: Flask) -> Iterator[Celery]:
    """A real Celery worker (threads) consuming otp, mail and bulk from Redis."""
    celery_app: Celery = worker_app.extensions["celery"]
    with start_worker(celery_app, pool="threads", concurrency=2, perform_ping_check=False,
                      queues=["otp", "mail", "bulk"], shutdown_timeout=30,
                      loglevel="WARNING"):
        yield celery_app


@pytest.fixture
def live_server(worker_app: Flask, celery_worker: Celery) -> Iterator[str]:
    """The app served over real HTTP on a free port, its tasks run by a real worker.

    Yields the base URL (``http://127.0.0.1:<port>``), which is also the app's
    ``PUBLIC_URL``; werkzeug's threaded server runs in a background thread until
    the test ends.
    """
    server = make_server("127.0.0.1", 0, worker_app, threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    worker_app.config["PUBLIC_URL"] = url  # links in mail point here (never the Host header)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    yield url
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()
