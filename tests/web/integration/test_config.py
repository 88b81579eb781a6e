"""Configuration: strict parsing, Flask-Mail's defaults, one clear line from every process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask
from flask_mail import Mail

from web import config as settings
from web import create_app
from web.config import ConfigError
from web.testing import free_port

BIN = Path(sys.executable).parent
FLASK_MAIL_KEYS = {
    # our name -> the attribute Flask-Mail's state keeps it in
    "MAIL_SERVER": "server", "MAIL_USERNAME": "username", "MAIL_PASSWORD": "password",
    "MAIL_PORT": "port", "MAIL_USE_TLS": "use_tls", "MAIL_USE_SSL": "use_ssl",
    "MAIL_DEFAULT_SENDER": "default_sender", "MAIL_DEBUG": "debug",
    "MAIL_MAX_EMAILS": "max_emails", "MAIL_SUPPRESS_SEND": "suppress",
    "MAIL_ASCII_ATTACHMENTS": "ascii_attachments",
}


def check_environ(environ: dict[str, str]) -> None:
    """What ``create_app`` does with the environment, without building an app."""
    config = settings.from_environ(environ)
    config["CELERY_BROKER_URL"] = config["CELERY_BROKER_URL"] or config["REDIS_URL"]
    settings.check(config)


@pytest.mark.parametrize(("name", "raw"), [
    ("MAIL_PORT", "abc"), ("MAIL_PORT", "0"), ("MAIL_PORT", ""),
    ("MAIL_USE_TLS", "maybe"), ("MAIL_USE_SSL", "on"), ("MAIL_DEBUG", "2"),
    ("MAIL_SUPPRESS_SEND", ""), ("MAIL_ASCII_ATTACHMENTS", "TRUEISH"), ("MAIL_TLS_VERIFY", "y"),
    ("MAIL_MAX_EMAILS", "seven"), ("WEBHOOK_ALLOW_PRIVATE", "sometimes"),
    ("MAIL_TIMEOUT", "-1"), ("MAIL_TIMEOUT", "soon"),
    ("MAIL_RATE_LIMIT", "fast"), ("MAIL_MAX_CONNECTIONS", "-2"),
    ("MAIL_TLS_CA_FILE", "/no/such/ca.pem"), ("OTP_LENGTH", "3"), ("OTP_TTL", "ten"),
    ("OTP_MAX_ATTEMPTS", "0"), ("MAX_ATTACHMENT_BYTES", "1e6"), ("MAX_MESSAGE_BYTES", "big"),
])
def test_malformed_value_names_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as raised:
        check_environ({"SECRET_KEY": "s", name: raw})
    message = str(raised.value)
    assert message.startswith(f"{name}: ")
    assert "\n" not in message


def test_tls_and_ssl_together_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"^MAIL_USE_TLS and MAIL_USE_SSL: "):
        check_environ({"SECRET_KEY": "s", "MAIL_USE_TLS": "true", "MAIL_USE_SSL": "yes"})


def test_secret_key_is_required_outside_development_and_testing() -> None:
    with pytest.raises(ConfigError, match=r"^SECRET_KEY: "):
        check_environ({})
    with pytest.raises(ConfigError, match=r"^SECRET_KEY: "):
        check_environ({"POSTROOM_ENV": "production", "SECRET_KEY": ""})
    check_environ({"POSTROOM_ENV": "development"})
    check_environ({"POSTROOM_ENV": "testing"})


@pytest.mark.parametrize(("raw", "value"), [
    ("true", True), ("TRUE", True), ("1", True), ("yes", True), (" Yes ", True),
    ("false", False), ("False", False), ("0", False), ("no", False), ("NO", False),
])
def test_booleans_parse_the_six_words(raw: str, value: bool) -> None:
    assert settings.from_environ({"MAIL_USE_TLS": raw})["MAIL_USE_TLS"] is value


def test_defaults_match_flask_mail() -> None:
    """Our defaults are the values Flask-Mail itself falls back to for an empty config."""
    for testing in (False, True):  # MAIL_SUPPRESS_SEND follows app.testing, as theirs does
        ours = settings.from_environ({})
        ours["TESTING"] = testing
        settings.normalise(ours)
        plain = Flask("defaults")
        plain.testing = testing
        state = Mail().init_mail(plain.config, debug=plain.debug, testing=plain.testing)
        for name, attribute in FLASK_MAIL_KEYS.items():
            theirs = getattr(state, attribute)
            assert ours[name] == theirs, f"{name}: ours {ours[name]!r}, Flask-Mail's {theirs!r}"
    assert ours["MAIL_TIMEOUT"] == 30.0 and ours["MAIL_TLS_VERIFY"] is True
    assert (ours["OTP_LENGTH"], ours["OTP_TTL"], ours["OTP_MAX_ATTEMPTS"]) == (6, 600, 5)


def test_create_app_reads_the_environment_and_the_test_config_wins(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAIL_PORT", "2525")
    monkeypatch.setenv("MAIL_USE_TLS", "yes")
    monkeypatch.setenv("API_TOKENS", " one, two ,,")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/3")
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    app = create_app({"TESTING": True, "MAIL_PORT": 1026})
    assert app.config["MAIL_PORT"] == 1026
    assert app.config["MAIL_USE_TLS"] is True
    assert app.config["API_TOKENS"] == ["one", "two"]
    assert app.config["CELERY_BROKER_URL"] == "redis://127.0.0.1:1/3"
    assert app.extensions["celery"].conf.broker_url == "redis://127.0.0.1:1/3"


def test_create_app_stops_on_a_malformed_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAIL_USE_TLS", "maybe")
    with pytest.raises(ConfigError, match=r"^MAIL_USE_TLS: "):
        create_app({"TESTING": True})


# --- the processes: one clear line, no traceback -------------------------------------------


def bad_environ(**values: str) -> dict[str, str]:
    """A minimal environment: nothing from the host's Postroom settings leaks in."""
    return {"PATH": str(BIN) + ":/usr/bin:/bin", "HOME": "/tmp", "SECRET_KEY": "s",
            "REDIS_URL": "redis://127.0.0.1:1/0", **values}


EXPECTED = "postroom: configuration error: MAIL_PORT: expected a whole number, got 'abc'"


@pytest.mark.parametrize("command", ["worker", "beat", "flower"])
def test_celery_with_a_bad_value_exits_with_one_line(command: str, tmp_path: Path) -> None:
    result = subprocess.run([str(BIN / "celery"), "-A", "worker", command], cwd=tmp_path,
                            env=bad_environ(MAIL_PORT="abc"), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert (result.stdout + result.stderr).strip() == EXPECTED


def test_gunicorn_with_a_bad_value_exits_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "gunicorn"), "-c", "python:web.gunicorn_conf",
         "--bind", f"127.0.0.1:{free_port()}", "web:create_app()"],
        cwd=tmp_path, env=bad_environ(MAIL_PORT="abc"), stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert EXPECTED in output.splitlines()
    assert "Traceback" not in output
    assert "Booting worker" not in output  # stopped in the master, before any fork


@pytest.mark.parametrize(("values", "line"), [
    ({"MAIL_PORT": "abc"}, EXPECTED.replace("postroom:", "postroom dev:")),
    ({"MAIL_SERVER": "relay.test", "MAIL_USE_TLS": "true", "MAIL_USE_SSL": "true"},
     "postroom dev: configuration error: MAIL_USE_TLS and MAIL_USE_SSL: choose one, not both"),
])
def test_postroom_dev_with_a_bad_value_starts_nothing(values: dict[str, str], line: str,
                                                      tmp_path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "postroom"), "dev", "--redis-port", str(free_port())], cwd=tmp_path,
        env=bad_environ(**values) | {"REDIS_URL": ""}, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == line
    assert result.stdout == ""


def test_private_webhook_addresses_are_allowed_only_in_development_by_default() -> None:
    def allowed(**environ: str) -> bool:
        config = settings.from_environ({"SECRET_KEY": "k", "PUBLIC_URL": "https://x.example",
                                        **environ})
        settings.normalise(config)
        return bool(config["WEBHOOK_ALLOW_PRIVATE"])

    assert allowed() is False
    assert allowed(POSTROOM_ENV="development") is True
    assert allowed(POSTROOM_ENV="development", WEBHOOK_ALLOW_PRIVATE="no") is False
    assert allowed(WEBHOOK_ALLOW_PRIVATE="yes") is True
