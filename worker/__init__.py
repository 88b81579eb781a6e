"""The Celery entry point: ``celery -A worker worker|beat|flower``.

This is the only module that creates a Flask app at import time.
"""

from __future__ import annotations

from web import create_app
from web.config import ConfigError

try:
    flask_app = create_app()
except ConfigError as err:
    raise SystemExit(f"postroom: configuration error: {err}") from None

celery_app = flask_app.extensions["celery"]
app = celery_app  # what `celery -A worker` looks for first
