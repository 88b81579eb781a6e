"""Celery bound to the Flask app, as in Flask's own Celery pattern."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, Task
from celery.app import backends
from celery.exceptions import Ignore
from flask import Flask

from tasks.shared import broker, connection
from tasks.workers import heartbeat, kept_sessions, reconciler_step
from web.testing_mode import EagerGuard


class PostroomCelery(Celery):  # type: ignore[misc]
    """Celery whose publishers do not subscribe to each task's result when they send it.

    Celery's Redis result backend subscribes to a task's result channel as the task is
    sent, in case the sender waits for it. Postroom's senders never do (results are kept
    for Flower and operators), and the subscription costs a round trip per enqueue; when
    Redis goes away at that moment it retries for 20 s and then leaves the process's
    result consumer broken ("the Celery application must be restarted") instead of
    failing the request with a 503. ``AsyncResult.get()`` still subscribes when it is
    called.
    """

    _backend_class: tuple[Any, str] | None = None

    def _get_backend(self) -> Any:
        """One result backend per thread, as Celery keeps them, but its class looked up
        once per app: the lookup scans the installed packages' entry points (about 10 ms,
        which every thread's first publish would pay)."""
        if self._backend_class is None:
            self._backend_class = backends.by_url(
                self.backend_cls or self.conf.result_backend, self.loader)
        backend_class, url = self._backend_class
        backend = backend_class(app=self, url=url)
        backend.on_task_call = _publish_without_subscribing
        return backend


def _publish_without_subscribing(producer: Any, task_id: str) -> None:
    """Nothing to do when a task is sent: nobody sending it waits for its result."""


def celery_init_app(app: Flask) -> Celery:
    """Create the Celery app for *app*; every task runs inside ``app.app_context()``.

    A ``TESTING`` app that never said whether Celery is eager warns at its first task
    sent to the broker (:mod:`web.testing_mode`).
    """
    guard = EagerGuard(app.config)

    class FlaskTask(Task):  # type: ignore[misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

        def apply_async(self, *args: Any, **kwargs: Any) -> Any:
            if not self.app.conf.task_always_eager:
                guard.task_sent(self.name, stacklevel=3)  # at the caller of .delay()
            return super().apply_async(*args, **kwargs)

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

    broker.keep_one_client_per_channel()  # not a client per publish and acknowledgement
    celery_app = PostroomCelery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object("celeryconfig")
    settings, broker_options, backend_options = _redis_settings(app.config)
    celery_app.conf.update(**settings)
    if connection.is_sentinel(os.environ.get("CELERY_BROKER_URL", "")) \
            and os.environ["CELERY_BROKER_URL"] != settings["broker_url"]:
        # Celery reads CELERY_BROKER_URL from the environment before its own setting;
        # give it kombu's spelling of the Sentinel group (``;``-joined URLs)
        os.environ["CELERY_BROKER_URL"] = settings["broker_url"]
    celery_app.conf.update(**app.config.get("CELERY", {}))
    conf = celery_app.conf
    conf.broker_transport_options = _merge(broker_options, conf.broker_transport_options)
    conf.result_backend_transport_options = _merge(backend_options,
                                                   conf.result_backend_transport_options)
    celery_app.set_default()
    heartbeat.register(celery_app, app.extensions["redis"])
    reconciler_step.register(celery_app, app)
    kept_sessions.register(celery_app, app)
    app.extensions["celery"] = celery_app
    return celery_app



def _redis_settings(config: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The broker's and the result backend's settings from the app config: Celery
    settings, broker transport options, result backend transport options."""
    timeouts = connection.Timeouts.from_config(config)
    password = config.get("REDIS_SENTINEL_PASSWORD")
    broker_url, broker_options = connection.broker_settings(
        config["CELERY_BROKER_URL"], timeouts, sentinel_password=password)
    backend = connection.backend_settings(config["REDIS_URL"], timeouts,
                                          sentinel_password=password)
    backend_options = backend.pop("result_backend_transport_options", {})
    return {"broker_url": broker_url, **backend}, broker_options, backend_options


def _merge(base: dict[str, Any], current: Any) -> dict[str, Any]:
    """*base* with what is already set on top: a test's ``CELERY`` override may replace
    the options dict (its own key prefix, a short visibility timeout), and what it
    sets wins; the timeouts are added to it."""
    return base | dict(current or {})
