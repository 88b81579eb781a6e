"""Celery bound to the Flask app, as in Flask's own Celery pattern."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore
from flask import Flask

from web import heartbeat, reconciler_step


def celery_init_app(app: Flask) -> Celery:
    """Create the Celery app for *app*; every task runs inside ``app.app_context()``."""

    class FlaskTask(Task):  # type: ignore[misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

        def retry(self, *args: Any, **kwargs: Any) -> Any:
            """In eager mode, run the next attempt now.

            Celery re-raises ``Retry`` to the caller when eager exceptions
            propagate, so a task that retries would fail in tests; here the
            retry runs at once, as the worker would run it later.
            """
            request = self.request
            if not (request.is_eager and self.app.conf.task_eager_propagates):
                return super().retry(*args, **kwargs)
            self.apply(args=request.args, kwargs=request.kwargs, retries=request.retries + 1,
                       throw=True)
            raise Ignore()

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object("celeryconfig")
    celery_app.conf.update(
        broker_url=app.config["CELERY_BROKER_URL"],
        result_backend=app.config["REDIS_URL"],
        **app.config.get("CELERY", {}),
    )
    celery_app.set_default()
    heartbeat.register(celery_app, app.extensions["redis"])
    reconciler_step.register(celery_app, app)
    app.extensions["celery"] = celery_app
    return celery_app
