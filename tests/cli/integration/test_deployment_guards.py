"""Deployment guards: PUBLIC_URL outside development, links never from the Host header,
the session cookie's flags, ``/metrics`` behind METRICS_TOKEN (required outside development
unless METRICS_PUBLIC=true), the guess budget's check."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from tests.conftest import AUTH, app_config
from tests.support.paths import ROOT
from tests.support.smtp_server import SMTPTestServer
from web import config as settings
from web import create_app
from web.config import ConfigError

PRODUCTION = {"POSTROOM_ENV": "production", "SECRET_KEY": "s" * 32, "METRICS_TOKEN": "m" * 32}


def checked(environ: dict[str, str]) -> dict[str, Any]:
    config = settings.from_environ(environ)
    config["CELERY_BROKER_URL"] = config["CELERY_BROKER_URL"] or config["REDIS_URL"]
    settings.check(config)
    return config


def test_public_url_is_required_outside_development() -> None:
    with pytest.raises(ConfigError, match=r"^PUBLIC_URL: must be set outside development"):
        checked(PRODUCTION)
    with pytest.raises(ConfigError, match=r"^PUBLIC_URL: expected an http"):
        checked({**PRODUCTION, "PUBLIC_URL": "mail.example.com"})
    checked({**PRODUCTION, "PUBLIC_URL": "https://mail.example.com"})
    checked({"POSTROOM_ENV": "development"})


def test_metrics_token_is_required_outside_development() -> None:
    deployed = {**PRODUCTION, "PUBLIC_URL": "https://mail.example.com"}
    del deployed["METRICS_TOKEN"]
    with pytest.raises(ConfigError) as refused:
        checked(deployed)
    message = str(refused.value)
    assert message.startswith("METRICS_TOKEN: must be set outside development")
    assert "METRICS_PUBLIC=true" in message
    with pytest.raises(ConfigError, match=r"^METRICS_TOKEN: "):
        checked({**deployed, "METRICS_PUBLIC": "false"})
    with pytest.raises(ConfigError, match=r"^METRICS_PUBLIC: expected true/false"):
        checked({**deployed, "METRICS_PUBLIC": "sure"})
    assert checked({**deployed, "METRICS_PUBLIC": "true"})["METRICS_PUBLIC"] is True
    assert checked({**deployed, "METRICS_TOKEN": "t"})["METRICS_TOKEN"] == "t"
    checked({"POSTROOM_ENV": "development"})


def test_the_processes_refuse_to_start_without_a_metrics_token() -> None:
    """``celery -A worker`` and gunicorn both build the app: the worker entry shows it."""
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "POSTROOM_ENV": "production",
           "SECRET_KEY": "s" * 32, "PUBLIC_URL": "https://mail.example.com"}
    result = subprocess.run([sys.executable, "-c", "import worker"], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().startswith(
        "postroom: configuration error: METRICS_TOKEN: must be set outside development")
    assert "METRICS_PUBLIC=true" in result.stderr


def test_a_guess_budget_that_breaks_the_promise_stops_start_up() -> None:
    base = {**PRODUCTION, "PUBLIC_URL": "https://mail.example.com"}
    checked({**base, "OTP_GUESSES_PER_DAY": "49"})
    with pytest.raises(ConfigError, match=r"^OTP_GUESSES_PER_DAY: 50 wrong codes"):
        checked({**base, "OTP_GUESSES_PER_DAY": "50"})
    with pytest.raises(ConfigError, match=r"^OTP_GUESSES_PER_DAY: 20 wrong codes"):
        checked({**base, "OTP_LENGTH": "4"})


@pytest.fixture
def config_overrides() -> dict[str, Any]:
    return {"PUBLIC_URL": "https://mail.example.org", "METRICS_TOKEN": "scrape-me"}


def test_unsubscribe_links_never_follow_the_host_header(client: FlaskClient,
                                                        smtp_server: SMTPTestServer) -> None:
    response = client.post("/api/campaigns", headers={**AUTH, "Host": "evil.example.net"},
                           json={"subject": "Hi", "body": "Leave: {{ unsubscribe_url }}",
                                 "recipients": [{"email": "ada@example.com"}]})
    assert response.status_code == 202, response.get_json()
    [received] = smtp_server.received
    assert str(received.message["List-Unsubscribe"]).startswith(
        "<https://mail.example.org/unsubscribe/")
    assert b"evil.example.net" not in received.data


def test_metrics_needs_the_token_when_one_is_set(client: FlaskClient) -> None:
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    response = client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert response.status_code == 200
    assert b"postroom_queue_depth" in response.data


def test_metrics_is_open_without_a_token(redis_client: redis.Redis, redis_url: str,
                                         smtp_server: SMTPTestServer) -> None:
    client = create_app(app_config(redis_url, smtp_server.port)).test_client()
    assert client.get("/metrics").status_code == 200


def test_the_session_cookie_is_secure_outside_development(redis_client: redis.Redis,
                                                          redis_url: str,
                                                          smtp_server: SMTPTestServer) -> None:
    config = app_config(redis_url, smtp_server.port, TESTING=False,
                        PUBLIC_URL="https://mail.example.org", METRICS_TOKEN="scrape-me")
    app = create_app(config)
    assert (app.config["SESSION_COOKIE_SECURE"], app.config["SESSION_COOKIE_HTTPONLY"],
            app.config["SESSION_COOKIE_SAMESITE"]) == (True, True, "Lax")
    cookie = app.test_client().get("/verify").headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
