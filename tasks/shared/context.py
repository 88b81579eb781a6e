"""What any task reads from the Flask app it runs in: its Redis client and its settings.

Tasks run inside ``app.app_context()`` (see ``web.celery``). Delivery's own reads
(SMTP settings, retry policy, sessions) are :mod:`tasks.delivery.runtime`'s; these two
are every package's, so reading a setting never means importing delivery.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import current_app
from redis import Redis


def redis_client() -> Redis:
    client: Redis = current_app.extensions["redis"]
    return client


def app_config() -> Mapping[str, Any]:
    """The app's configuration, for stores that build themselves from it (read only)."""
    return current_app.config
