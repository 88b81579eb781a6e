"""``celery -A bench.peer_worker worker``: the peer's app, from the environment."""

from __future__ import annotations

import os

from bench.peer_app import create_app

flask_app = create_app(os.environ["PEER_BROKER_URL"], int(os.environ["PEER_MAIL_PORT"]))
celery_app = flask_app.extensions["celery"]
