"""``LOG_FORMAT=json``: one JSON object per log line, for log pipelines; beat's
routine scans logged at DEBUG; and ``TASK_LOG_LEVEL`` for Celery's per-task lines.

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

# beat's routine scans: sent every few seconds, so their ``sending``, ``received`` and
# ``succeeded`` lines are logged at DEBUG, not INFO
ROUTINE_TASKS = ("postroom.campaign.start_due", "postroom.reconcile",
                 "postroom-campaigns-due", "postroom-reconcile")
CELERY_TASK_LOGGERS = ("celery.beat", "celery.worker.strategy", "celery.app.trace")
# Celery's "Task ... received" and "Task ... succeeded in" lines, one pair per task run
CELERY_PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


class RoutineTasksAtDebug(logging.Filter):
    """Moves Celery's INFO lines about beat's routine tasks down to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        message = record.getMessage()
        if not any(name in message for name in ROUTINE_TASKS):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def quiet_routine_tasks() -> None:
    """Install :class:`RoutineTasksAtDebug` on Celery's task loggers (once)."""
    for name in CELERY_TASK_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RoutineTasksAtDebug) for f in logger.filters):
            logger.addFilter(RoutineTasksAtDebug())


def set_task_log_level(config: Mapping[str, Any]) -> None:
    """``TASK_LOG_LEVEL``: ``WARNING`` hides Celery's per-task "received" and "succeeded"
    lines (a task's failure, at ERROR, still shows); ``INFO``, the default, leaves the
    loggers' levels as they are."""
    level = str(config.get("TASK_LOG_LEVEL") or "INFO")
    if level != "INFO":
        for name in CELERY_PER_TASK_LOGGERS:
            logging.getLogger(name).setLevel(level)


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
