"""Every Celery setting. Values that vary between deployments come from the environment.

The broker and result URLs are set by ``web.celery.celery_init_app`` from the
app's configuration (``CELERY_BROKER_URL``, ``REDIS_URL``), so tests can
point them elsewhere; it also adds every Redis timeout, keepalive and health-check
setting, and translates a ``sentinel://`` URL to kombu's and Celery's form
(``tasks.shared.connection``) — the URLs here are what a bare ``celery`` sees.
"""

from __future__ import annotations

import os

from kombu import Queue as BrokerQueue

from tasks.vocabulary import Queue

_redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
broker_url = os.environ.get("CELERY_BROKER_URL") or _redis_url
result_backend = _redis_url

# Longest a task may run; the visibility timeout must exceed it and any retry countdown.
task_time_limit = int(os.environ.get("CELERY_TASK_TIME_LIMIT", "3600"))
task_soft_time_limit = task_time_limit - 60
_visibility_timeout = int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", "7200"))
broker_transport_options = {
    "visibility_timeout": _visibility_timeout,
    "global_keyprefix": os.environ.get("CELERY_KEY_PREFIX", "postroom:celery:"),
}
result_backend_transport_options = {"global_keyprefix": "postroom:celery:"}
# Only the delivery tasks store a result (their counts by outcome, for Flower), briefly.
result_expires = int(os.environ.get("CELERY_RESULT_EXPIRES", "3600"))
broker_connection_retry_on_startup = True

# Messages are acknowledged after the task ran; a worker lost mid-task gives it back.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_ignore_result = True

# JSON only: task arguments are ids and primitives, never objects or bytes.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

task_queues = tuple(BrokerQueue(queue) for queue in Queue)  # otp, mail, bulk, events
task_default_queue = Queue.MAIL
task_routes = {
    "postroom.otp.*": {"queue": Queue.OTP},
    "postroom.deliver_message": {"queue": Queue.MAIL},
    "postroom.deliver_each": {"queue": Queue.BULK},
    "postroom.campaign.*": {"queue": Queue.BULK},
    "postroom.reconcile": {"queue": Queue.MAIL},
    "postroom.relay_probe": {"queue": Queue.MAIL},
    "postroom.webhooks.*": {"queue": Queue.EVENTS},  # calls to client apps: never in the way
}

# Events for Flower. A "task-sent" event costs every enqueue another publish (a fifth of
# POST /api/messages); Flower shows a task from the moment a worker receives it without
# one, so it is off unless CELERY_TASK_SENT_EVENTS=true.
worker_send_task_events = True
task_send_sent_event = os.environ.get("CELERY_TASK_SENT_EVENTS", "").lower() in {"1", "true",
                                                                                 "yes"}
worker_hijack_root_logger = False
# Task events are published in batches, at most 0.1 s after the first (one message, not
# three a task): tasks.workers.consumer
worker_consumer = "tasks.workers.consumer:Consumer"

timezone = "UTC"
enable_utc = True
beat_schedule: dict[str, dict[str, object]] = {}
# Beat starts due scheduled campaigns (no long ETAs on Redis) ...
beat_schedule["postroom-campaigns-due"] = {
    "task": "postroom.campaign.start_due",
    "schedule": float(os.environ.get("CAMPAIGN_SCAN_INTERVAL", "10")),
}
# ... and runs the reconciler, which re-enqueues whatever stopped moving.
beat_schedule["postroom-reconcile"] = {
    "task": "postroom.reconcile",
    "schedule": float(os.environ.get("RECONCILE_INTERVAL", "4")),
}

# Beat's routine tasks (every few seconds) send no task events, so Flower's task list shows
# mail, not housekeeping; /metrics shows them (postroom_beat_last_seen_timestamp_seconds,
# postroom_reconciler_requeues_total). CELERY_ROUTINE_TASK_EVENTS=true shows them too.
_routine_tasks = ("postroom.reconcile", "postroom.campaign.start_due")
_routine_events = os.environ.get("CELERY_ROUTINE_TASK_EVENTS", "").lower() in {"1", "true",
                                                                               "yes"}
task_annotations = {name: {"send_events": _routine_events} for name in _routine_tasks}
