"""``DELIVERY_LOG_LEVEL``: the level of the one-line-per-outcome delivery log."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import AUTH
from tests.smtp_server import SMTPTestServer


@pytest.mark.parametrize("config_overrides", [{}, {"DELIVERY_LOG_LEVEL": "DEBUG"}],
                         ids=["default", "debug"])
def test_the_outcome_lines_follow_the_configured_level(
        client: FlaskClient, smtp_server: SMTPTestServer, caplog: pytest.LogCaptureFixture,
        config_overrides: dict[str, Any]) -> None:
    caplog.set_level(logging.INFO, logger="tasks.delivery_watch")
    client.post("/api/messages", headers=AUTH,
                json={"to": ["ada@example.com"], "subject": "Hi", "body": "Hello"})
    assert len(smtp_server.received) == 1
    lines = [r for r in caplog.records if r.name == "tasks.delivery_watch"
             and "sent to example.com" in r.getMessage()]
    expected = 0 if config_overrides.get("DELIVERY_LOG_LEVEL") == "DEBUG" else 1
    assert len(lines) == expected, [r.getMessage() for r in caplog.records]


def test_an_outcome_line_is_a_whole_record_through_the_logger_filters(
        client: FlaskClient, smtp_server: SMTPTestServer,
        caplog: pytest.LogCaptureFixture) -> None:
    """The record is built without Logger.log's search of the stack, but it still passes the
    logger's filters and carries the fields a format or a JSON line reads."""
    caplog.set_level(logging.INFO, logger="tasks.delivery_watch")
    seen: list[logging.LogRecord] = []

    def keep(record: logging.LogRecord) -> bool:
        seen.append(record)
        return True

    logger = logging.getLogger("tasks.delivery_watch")
    logger.addFilter(keep)
    try:
        client.post("/api/messages", headers=AUTH,
                    json={"to": ["ada@example.com"], "subject": "Hi", "body": "Hello"})
    finally:
        logger.removeFilter(keep)
    assert len(smtp_server.received) == 1
    [line] = [r for r in seen if "sent to example.com" in r.getMessage()]
    assert line.levelno == logging.INFO and line.funcName == "log_outcomes"
    assert line.pathname.endswith("delivery_watch.py") and line.lineno > 0
    assert line.delivery["status"] == "sent" and line.delivery["domain"] == "example.com"  # type: ignore[attr-defined]
    assert "ada@" not in line.getMessage()
