"""The reconciler's loop in every worker process (a Celery bootstep).

Each worker process tries for the reconciler's turn every ``RECONCILE_INTERVAL``
(:func:`tasks.reconciler.service.reconcile_once` takes it in Redis), so recovery runs
wherever any worker runs and does not stop with beat's host or any one worker's.
"""

from __future__ import annotations

import weakref
from typing import Any

from celery import Celery, bootsteps
from flask import Flask

from tasks.reconciler.service import ReconcilerLoop, reconcile_once

_apps: weakref.WeakKeyDictionary[Celery, Flask] = weakref.WeakKeyDictionary()


class ReconcilerStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Starts the worker's reconciler thread; stops it with the worker."""

    def __init__(self, worker: Any, **options: Any) -> None:
        super().__init__(worker, **options)
        self.loop: ReconcilerLoop | None = None

    def start(self, worker: Any) -> None:
        flask_app = _apps.get(worker.app)
        if flask_app is None or not flask_app.config.get("RECONCILE_IN_WORKERS", True):
            return

        def run_pass() -> None:
            with flask_app.app_context():
                reconcile_once()

        interval = float(flask_app.config["RECONCILE_INTERVAL"])
        self.loop = ReconcilerLoop(run_pass, interval).start()

    def stop(self, worker: Any) -> None:
        if self.loop is not None:
            self.loop.stop()
            self.loop = None


def register(celery_app: Celery, flask_app: Flask) -> None:
    """Give *celery_app*'s workers the reconciler loop of *flask_app*."""
    _apps[celery_app] = flask_app
    celery_app.steps["worker"].add(ReconcilerStep)
