"""``GET /healthz`` (dependency checks) and ``GET /metrics`` (Prometheus text).

With ``METRICS_TOKEN`` set, ``/metrics`` answers only a request that sends it as
``Authorization: Bearer <token>`` (Prometheus: ``authorization: {credentials: ...}``).
"""

from __future__ import annotations

import hmac
import socket
from typing import Any

import redis
from flask import Blueprint, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tasks.stores.throttle import sessions_open

bp = Blueprint("health", __name__)

QUEUES = ("otp", "mail", "bulk")


def _check_redis() -> dict[str, Any]:
    try:
        current_app.extensions["redis"].ping()
    except redis.RedisError as err:
        return {"ok": False, "error": str(err)}
    return {"ok": True}


def _check_smtp() -> dict[str, Any]:
    config = current_app.config
    if config["MAIL_SUPPRESS_SEND"]:
        return {"ok": True, "note": "sending suppressed"}
    try:
        with socket.create_connection((config["MAIL_SERVER"], config["MAIL_PORT"]), timeout=2):
            pass
    except OSError as err:
        return {"ok": False, "error": f"{config['MAIL_SERVER']}:{config['MAIL_PORT']}: {err}"}
    return {"ok": True}


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    checks = {"redis": _check_redis(), "smtp": _check_smtp()}
    healthy = all(check["ok"] for check in checks.values())
    return jsonify({"ok": healthy, "checks": checks}), 200 if healthy else 503


def queue_depths(client: redis.Redis, prefix: str) -> dict[str, int]:
    """Messages waiting in each Celery queue on the Redis broker."""
    return {queue: int(client.llen(prefix + queue)) for queue in QUEUES}


def sending_limits(registry: CollectorRegistry, client: redis.Redis) -> None:
    """The limits shared by all workers (0 = none), and the SMTP sessions held under them."""
    config = current_app.config
    Gauge("postroom_mail_rate_limit", "MAIL_RATE_LIMIT: messages/s across all workers",
          registry=registry).set(config.get("MAIL_RATE_LIMIT") or 0)
    Gauge("postroom_mail_max_connections", "MAIL_MAX_CONNECTIONS across all workers",
          registry=registry).set(config.get("MAIL_MAX_CONNECTIONS") or 0)
    Gauge("postroom_smtp_sessions_open", "SMTP sessions holding a MAIL_MAX_CONNECTIONS slot",
          registry=registry).set(sessions_open(client))


def _metrics_allowed() -> bool:
    expected = current_app.config.get("METRICS_TOKEN")
    if not expected:
        return True
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), str(expected).encode())


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    if not _metrics_allowed():
        return Response("send METRICS_TOKEN as 'Authorization: Bearer <token>'\n", status=401,
                        mimetype="text/plain", headers={"WWW-Authenticate": "Bearer"})
    registry = CollectorRegistry()
    depth = Gauge("postroom_queue_depth", "Tasks waiting in a Celery queue", ["queue"],
                  registry=registry)
    up = Gauge("postroom_redis_up", "1 when Redis answers", registry=registry)
    client = current_app.extensions["redis"]
    celery_conf = current_app.extensions["celery"].conf
    prefix = celery_conf.broker_transport_options.get("global_keyprefix", "")
    try:
        for queue, count in queue_depths(client, prefix).items():
            depth.labels(queue=queue).set(count)
        sending_limits(registry, client)
        up.set(1)
    except redis.RedisError:
        up.set(0)
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
