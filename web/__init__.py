"""The Flask application: ``create_app(config=None)``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

from tasks.shared import connection
from tasks.vocabulary import template_context
from web import config as settings
from web import form_errors, logs, page_headers, request_bounds, testing_mode
from web.celery import celery_init_app
from web.extensions import csrf, limiter, mail
from web.json_provider import BoundedJSONProvider

__all__ = ["create_app"]


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then the environment, then *config* (tests).

    Raises :class:`web.config.ConfigError` for a malformed or missing value.
    """
    app = Flask(__name__)
    app.json = BoundedJSONProvider(app)
    app.config.from_mapping(settings.from_environ(os.environ))
    if config:
        app.config.from_mapping(config)
    if app.testing and not testing_mode.names_redis(config):  # never 127.0.0.1:6379/0
        app.config["REDIS_URL"] = testing_mode.own_redis_url(app)
    if not app.config.get("CELERY_BROKER_URL"):
        app.config["CELERY_BROKER_URL"] = app.config["REDIS_URL"]
    settings.normalise(app.config)
    settings.check(app.config)
    logs.configure(app.config)
    logs.quiet_routine_tasks()
    logs.set_task_log_level(app.config)
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = os.urandom(32).hex()  # dev/testing only (checked above)
    if not app.config.get("PUBLIC_URL"):
        app.config["PUBLIC_URL"] = settings.DEV_PUBLIC_URL  # dev/testing only (checked above)
    # the session cookie (CSRF tokens, operator sign-in): HttpOnly, SameSite=Lax, and
    # Secure outside development and testing
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = app.config.get("SESSION_COOKIE_SAMESITE") or "Lax"
    app.config["SESSION_COOKIE_SECURE"] = bool(
        app.config.get("SESSION_COOKIE_SECURE") or not settings.relaxed(app.config))

    # a Redis host that does not answer at all is a 503 within seconds, not a hung request;
    # REDIS_URL may name a Sentinel group (the client then follows its primary)
    app.extensions["redis"] = connection.redis_client(
        app.config["REDIS_URL"], connection.Timeouts.from_config(app.config),
        sentinel_password=app.config.get("REDIS_SENTINEL_PASSWORD"))
    request_bounds.init_app(app)  # first: before the CSRF check and the throttles read a body
    page_headers.init_app(app)
    mail.init_app(app)
    csrf.init_app(app)
    form_errors.init_app(app)
    # the rate limiter's counters go through the state client's pool (its timeouts and
    # Sentinel discovery) unless RATELIMIT_STORAGE_URI names a storage of its own
    limiter_pool = None
    if not app.config.get("RATELIMIT_STORAGE_URI"):
        app.config["RATELIMIT_STORAGE_URI"] = "redis://"
        limiter_pool = app.extensions["redis"].connection_pool
    app.config["RATELIMIT_STORAGE_OPTIONS"] = {
        **app.config.get("RATELIMIT_STORAGE_OPTIONS", {}), "connection_pool": limiter_pool}
    limiter.init_app(app)
    celery_init_app(app)

    import tasks  # noqa: F401  (registers the tasks with the Celery app)
    from web import (
        api,
        health,
        home,
        metrics,
        outages,
        outbox,
        outbox_api,  # noqa: F401  (its routes on the outbox blueprint)
    )

    outages.init_app(app)
    app.context_processor(template_context)  # the statuses' words, for templates and their JS

    app.register_blueprint(api.bp)
    app.register_blueprint(home.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(metrics.bp)
    from web import otp

    app.register_blueprint(otp.bp)
    from web import campaigns, unsubscribe

    app.register_blueprint(unsubscribe.bp)
    app.register_blueprint(campaigns.bp)
    if outbox.offered(app.config):
        app.register_blueprint(outbox.bp)
    return app
