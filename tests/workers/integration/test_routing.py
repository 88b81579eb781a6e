"""Each task lands in exactly one queue of the real Redis broker."""

from __future__ import annotations

import redis
from celery import Celery
from flask import Flask

from tests.conftest import app_config
from tests.support.smtp_server import SMTPTestServer
from web import create_app


def test_every_task_is_published_to_its_own_queue_only(redis_client: redis.Redis,
                                                        redis_url: str,
                                                        smtp_server: SMTPTestServer) -> None:
    config = app_config(redis_url, smtp_server.port, CELERY={
        "broker_transport_options": {"global_keyprefix": "postroom:routing-test:"}})
    app: Flask = create_app(config)
    celery_app: Celery = app.extensions["celery"]
    expected = {"postroom.otp.send": "otp", "postroom.deliver_message": "mail",
                "postroom.campaign.send_batch": "bulk", "postroom.webhooks.deliver": "events"}
    with celery_app.connection_for_write() as connection:  # a worker declares every queue
        for queue in celery_app.amqp.queues.values():
            queue.bind(connection.default_channel).declare()
    for name in expected:
        celery_app.send_task(name, args=["routing-probe"])

    depths = {queue: redis_client.llen(f"postroom:routing-test:{queue}")
              for queue in ("otp", "mail", "bulk", "events")}
    assert depths == {"otp": 1, "mail": 1, "bulk": 1, "events": 1}
    for name, queue in expected.items():
        raw = redis_client.lindex(f"postroom:routing-test:{queue}", 0)
        assert raw is not None and name.encode() in raw
