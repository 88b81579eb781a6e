"""The Celery entry point ``worker``: Celery bound to the Flask app, configured by celeryconfig."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from celery import Celery
from flask import Flask, current_app

# Imported in a child process: ``worker`` builds an app at import time and makes its
# Celery app the default, which must not leak into the test session.
PROBE = """
import json, worker
conf = worker.app.conf
router = worker.app.amqp.router
def queue(task):
    return router.route({}, task)["queue"].name
print(json.dumps({
    "same_app": worker.app is worker.flask_app.extensions["celery"],
    "task_bases": [cls.__name__ for cls in worker.app.Task.__mro__],
    "broker_url": conf.broker_url,
    "result_backend": conf.result_backend,
    "acks_late": conf.task_acks_late,
    "reject_on_worker_lost": conf.task_reject_on_worker_lost,
    "prefetch": conf.worker_prefetch_multiplier,
    "visibility_timeout": conf.broker_transport_options["visibility_timeout"],
    "key_prefix": conf.broker_transport_options["global_keyprefix"],
    "time_limit": conf.task_time_limit,
    "queues": sorted(q.name for q in conf.task_queues),
    "routes": {task: queue(task) for task in
               ["postroom.otp.send", "postroom.deliver_message", "postroom.campaign.send_batch",
                "postroom.webhooks.deliver"]},
    "events": conf.worker_send_task_events,
    "sent_event": conf.task_send_sent_event,
    "serializers": [conf.task_serializer, conf.result_serializer],
    "accept": [list(conf.accept_content), list(conf.result_accept_content)],
}))
"""


def probe(**environ: str) -> dict[str, Any]:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "POSTROOM_ENV": "development", **environ}
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return loaded


def test_worker_module_binds_celery_to_the_flask_app() -> None:
    facts = probe(REDIS_URL="redis://127.0.0.1:1/4")
    assert facts["same_app"] is True
    assert "FlaskTask" in facts["task_bases"]
    assert facts["broker_url"] == facts["result_backend"] == "redis://127.0.0.1:1/4"


def test_celeryconfig_holds_the_delivery_settings() -> None:
    facts = probe(REDIS_URL="redis://127.0.0.1:1/4", CELERY_BROKER_URL="redis://127.0.0.1:2/5",
                  CELERY_VISIBILITY_TIMEOUT="9000", CELERY_TASK_TIME_LIMIT="600")
    assert facts["broker_url"] == "redis://127.0.0.1:2/5"
    assert facts["result_backend"] == "redis://127.0.0.1:1/4"
    assert (facts["acks_late"], facts["reject_on_worker_lost"], facts["prefetch"]) == (
        True, True, 1)
    assert facts["visibility_timeout"] == 9000 > facts["time_limit"] == 600
    assert facts["key_prefix"].startswith("postroom:")
    assert facts["queues"] == ["bulk", "events", "mail", "otp"]
    assert facts["routes"] == {"postroom.otp.send": "otp", "postroom.deliver_message": "mail",
                               "postroom.campaign.send_batch": "bulk",
                               "postroom.webhooks.deliver": "events"}
    assert (facts["events"], facts["sent_event"]) == (True, False)  # sent events cost enqueues
    assert facts["serializers"] == ["json", "json"]
    assert facts["accept"] == [["json"], ["json"]]


def test_default_visibility_timeout_outlasts_the_longest_task() -> None:
    facts = probe(REDIS_URL="redis://127.0.0.1:1/4")
    assert facts["visibility_timeout"] > facts["time_limit"]


def test_a_task_runs_inside_the_app_context(app: Flask) -> None:
    celery_app: Celery = app.extensions["celery"]

    @celery_app.task(name="postroom.test.app_name")
    def app_name() -> str:
        return str(current_app.config["SECRET_KEY"])

    assert app_name.delay().get() == app.config["SECRET_KEY"]


def test_the_worker_process_refuses_a_bad_value() -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "SECRET_KEY": "s", "MAIL_USE_TLS": "maybe"}
    result = subprocess.run([sys.executable, "-c", "import worker"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "postroom: configuration error: MAIL_USE_TLS: expected true/false/1/0/yes/no, "
        "got 'maybe'")


def test_the_worker_process_needs_a_secret_key_in_production() -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "POSTROOM_ENV": "production"}
    result = subprocess.run([sys.executable, "-c", "import worker"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("postroom: configuration error: SECRET_KEY: ")
