"""``LOG_FORMAT=json``: one JSON object per log line, for log pipelines.

Each line has ``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``;
a delivery outcome adds ``delivery`` (kind, id, Message-ID, status, the
recipient's domain, SMTP code, seconds). With the default ``text`` the process's
own logging setup (gunicorn's, Celery's) is left as it is.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

EXTRA_FIELDS = ("delivery",)  # ``extra=`` attributes copied into the line


class JSONFormatter(logging.Formatter):
    """A log record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(config: Mapping[str, Any]) -> None:
    """Give the root logger's handlers (or a new one on stderr) JSON lines, if asked for."""
    if config.get("LOG_FORMAT") != "json":
        return
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
        if root.level == logging.WARNING:  # Python's default: nothing below was asked for
            root.setLevel(logging.INFO)
    for handler in root.handlers:
        if not isinstance(handler.formatter, JSONFormatter):
            handler.setFormatter(JSONFormatter())
