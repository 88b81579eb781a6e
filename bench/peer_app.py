"""The peer Postroom is compared with: the Flask docs' Celery pattern, as written.

A tiny Flask app with ``celery_init_app`` exactly as in pallets/flask
``examples/celery`` (a ``Task`` class that runs every task in the app
context), Flask-Mail, and one Celery task per email that calls
``mail.send(msg)``: one SMTP session per message. Its worker is Celery's
default prefork pool (one process per core), on a Redis broker. The only
addition is a counter in Redis, bumped after each ``mail.send`` returns, so
the benchmark knows when the last one is done; it needs nothing of Postroom.

The worker imports :mod:`bench.peer_worker`, which builds the app from the
environment (``PEER_BROKER_URL``, ``PEER_MAIL_PORT``).
"""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery, Task, shared_task
from flask import Flask, current_app

from bench.baseline import SENDER, flask_message

SENT_KEY = "bench:peer:sent"


def celery_init_app(app: Flask) -> Celery:
    """As in the Flask docs ("Background Tasks with Celery")."""

    class FlaskTask(Task):  # type: ignore[misc]
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


def create_app(broker_url: str, mail_port: int) -> Flask:
    from flask_mail import Mail

    app = Flask(__name__)
    app.config.from_mapping(
        MAIL_SERVER="127.0.0.1", MAIL_PORT=mail_port, MAIL_DEFAULT_SENDER=SENDER,
        BROKER_URL=broker_url,
        CELERY={"broker_url": broker_url, "result_backend": broker_url,
                "task_ignore_result": True},
    )
    Mail(app)
    celery_init_app(app)
    return app


@shared_task(ignore_result=True)
def send_email(i: int) -> None:
    """One personalised ~2 KB message, as ``bench.baseline`` builds it, on a session of its own."""
    mail: Any = current_app.extensions["mail"]
    mail.send(flask_message(i))
    redis.Redis.from_url(current_app.config["BROKER_URL"]).incr(SENT_KEY)
