"""What a task needs from the Flask app it runs in: Redis, SMTP settings, policy.

Tasks run inside ``app.app_context()`` (see ``web.celery``); this module is the
one place they read the app, so the engine and the stores never do.
"""

from __future__ import annotations

from flask import current_app
from redis import Redis

from tasks.delivery import RetryPolicy
from tasks.engine.compose import Composer
from tasks.engine.session import SMTPSettings


def redis_client() -> Redis:
    client: Redis = current_app.extensions["redis"]
    return client


def smtp_settings() -> SMTPSettings:
    return SMTPSettings.from_config(current_app.config)


def composer(settings: SMTPSettings) -> Composer:
    return Composer(message_id_domain=settings.message_id_domain,
                    ascii_attachments=settings.ascii_attachments)


def retry_policy() -> RetryPolicy:
    config = current_app.config
    return RetryPolicy(max_attempts=int(config["DELIVERY_MAX_ATTEMPTS"]),
                       base=float(config["DELIVERY_BACKOFF_BASE"]),
                       cap=float(config["DELIVERY_BACKOFF_CAP"]))
