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
