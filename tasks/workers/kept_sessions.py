"""A worker that stops ends the SMTP sessions its process kept open (a Celery bootstep).

Messages and codes leave their sessions open for the next one
(:func:`tasks.delivery.runtime.session_pool`); on a warm shutdown the worker says ``QUIT``
on each (on a cold one too), instead of leaving the relay to notice closed sockets.
"""

from __future__ import annotations

import weakref
from typing import Any

from celery import Celery, bootsteps
from flask import Flask

from tasks.delivery.runtime import SESSION_POOL

_apps: weakref.WeakKeyDictionary[Celery, Flask] = weakref.WeakKeyDictionary()


class KeptSessionsStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Closes the process's kept SMTP sessions when the worker stops."""

    def stop(self, worker: Any) -> None:
        flask_app = _apps.get(worker.app)
        pool = flask_app.extensions.get(SESSION_POOL) if flask_app is not None else None
        if pool is not None:
            pool.close_all()

    def terminate(self, worker: Any) -> None:  # a cold shutdown ends them too
        self.stop(worker)


def register(celery_app: Celery, flask_app: Flask) -> None:
    """Give *celery_app*'s workers the closing of *flask_app*'s kept sessions."""
    _apps[celery_app] = flask_app
    celery_app.steps["worker"].add(KeptSessionsStep)
