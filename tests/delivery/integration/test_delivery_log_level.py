"""``DELIVERY_LOG_LEVEL``: the level of the one-line-per-outcome delivery log; the line per
run; ``TASK_LOG_LEVEL``: Celery's lines per task."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import AUTH
from tests.support.smtp_server import SMTPTestServer
from web import config as settings
from web import logs
from web.config import ConfigError


@pytest.mark.parametrize("config_overrides", [{}, {"DELIVERY_LOG_LEVEL": "DEBUG"}],
                         ids=["default", "debug"])
def test_the_outcome_lines_follow_the_configured_level(
        client: FlaskClient, smtp_server: SMTPTestServer, caplog: pytest.LogCaptureFixture,
        config_overrides: dict[str, Any]) -> None:
    caplog.set_level(logging.INFO, logger="tasks.delivery.observers")
    client.post("/api/messages", headers=AUTH,
                json={"to": ["ada@example.com"], "subject": "Hi", "body": "Hello"})
    assert len(smtp_server.received) == 1
    lines = [r for r in caplog.records if r.name == "tasks.delivery.observers"
             and "sent to example.com" in r.getMessage()]
    expected = 0 if config_overrides.get("DELIVERY_LOG_LEVEL") == "DEBUG" else 1
    assert len(lines) == expected, [r.getMessage() for r in caplog.records]


def test_each_run_gets_one_line_with_its_counts_and_seconds(
        client: FlaskClient, smtp_server: SMTPTestServer,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tasks.delivery.runner")
    client.post("/api/messages", headers=AUTH,
                json={"to": ["ada@example.com"], "cc": ["bob@example.com"], "subject": "Hi",
                      "body": "Hello"})
    assert len(smtp_server.received) == 1
    [line] = [r.getMessage() for r in caplog.records if r.name == "tasks.delivery.runner"]
    assert re.fullmatch(r"message \w+: 2 sent, 0 deferred, 0 failed in \d+\.\d{3} s "
                        r"\(1 session\(s\) opened, 0 kept one\(s\) used\)", line), line


def test_task_log_level_warning_quiets_celerys_lines_per_task() -> None:
    loggers = [logging.getLogger(name) for name in logs.CELERY_PER_TASK_LOGGERS]
    before = [logger.level for logger in loggers]
    try:
        logs.set_task_log_level({"TASK_LOG_LEVEL": "INFO"})
        assert [logger.level for logger in loggers] == before  # INFO leaves them alone
        logs.set_task_log_level({"TASK_LOG_LEVEL": "WARNING"})
        assert all(not logger.isEnabledFor(logging.INFO) for logger in loggers)
        assert all(logger.isEnabledFor(logging.ERROR) for logger in loggers)  # failures show
    finally:
        for logger, level in zip(loggers, before, strict=True):
            logger.setLevel(level)


def test_a_malformed_task_log_level_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="TASK_LOG_LEVEL: expected DEBUG, INFO or WARNING"):
        settings.from_environ({"TASK_LOG_LEVEL": "loud"})


def test_an_outcome_line_is_a_whole_record_through_the_logger_filters(
        client: FlaskClient, smtp_server: SMTPTestServer,
        caplog: pytest.LogCaptureFixture) -> None:
    """The record is built without Logger.log's search of the stack, but it still passes the
    logger's filters and carries the fields a format or a JSON line reads."""
    caplog.set_level(logging.INFO, logger="tasks.delivery.observers")
    seen: list[logging.LogRecord] = []

    def keep(record: logging.LogRecord) -> bool:
        seen.append(record)
        return True

    logger = logging.getLogger("tasks.delivery.observers")
    logger.addFilter(keep)
    try:
        client.post("/api/messages", headers=AUTH,
                    json={"to": ["ada@example.com"], "subject": "Hi", "body": "Hello"})
    finally:
        logger.removeFilter(keep)
    assert len(smtp_server.received) == 1
    [line] = [r for r in seen if "sent to example.com" in r.getMessage()]
    assert line.levelno == logging.INFO and line.funcName == "log_outcomes"
    assert line.pathname.endswith("observers.py") and line.lineno > 0
    assert line.delivery["status"] == "sent" and line.delivery["domain"] == "example.com"  # type: ignore[attr-defined]
    assert "ada@" not in line.getMessage()
