"""``GET /healthz`` (dependency checks) and ``GET /metrics`` (Prometheus text).

With ``METRICS_TOKEN`` set, ``/metrics`` answers only a request that sends it as
``Authorization: Bearer <token>`` (Prometheus: ``authorization: {credentials: ...}``).
"""

from __future__ import annotations

import hmac
from typing import Any

import kombu.exceptions
import redis
from flask import Blueprint, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from tasks.engine.session import SMTPSettings
from tasks.stores.relays import RelayBoard, RelayStatus
from tasks.stores.throttle import sessions_open

bp = Blueprint("health", __name__)

QUEUES = ("otp", "mail", "bulk")


def _check_redis() -> dict[str, Any]:
    try:
        current_app.extensions["redis"].ping()
    except redis.RedisError as err:
        return {"ok": False, "error": str(err)}
    return {"ok": True}


def _check_broker(redis_check: dict[str, Any]) -> dict[str, Any]:
    """Whether a task could be published now (the same server as Redis by default)."""
    config = current_app.config
    if config["CELERY_BROKER_URL"] == config["REDIS_URL"]:
        return {**redis_check, "note": "the broker is the Redis server above"}
    celery_app = current_app.extensions["celery"]
    try:
        with celery_app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=0, timeout=2)
    except (kombu.exceptions.KombuError, OSError) as err:
        return {"ok": False, "error": str(err)}
    return {"ok": True}


def relay_names() -> list[str]:
    return [str(relay) for relay in SMTPSettings.from_config(current_app.config).relays]


def relay_statuses() -> list[RelayStatus]:
    """What workers last saw of each relay (raises RedisError if Redis is down)."""
    board = RelayBoard.from_config(current_app.extensions["redis"], current_app.config)
    return board.statuses(relay_names())


def _check_smtp() -> dict[str, Any]:
    """The relays as the workers last found them: no SMTP connection is opened here.

    Healthy unless every relay's last session failed (or is cooling down); a relay
    no worker has used yet counts as healthy.
    """
    if current_app.config["MAIL_SUPPRESS_SEND"]:
        return {"ok": True, "note": "sending suppressed"}
    try:
        statuses = relay_statuses()
    except redis.RedisError:
        return {"ok": True, "note": "relay states are kept in Redis, which cannot be reached",
                "relays": [{"relay": name, "state": "unknown"} for name in relay_names()]}
    usable = [s for s in statuses if s.state in ("up", "unknown")]
    return {"ok": bool(usable), "relays": [s.public() for s in statuses]}


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    redis_check = _check_redis()
    checks = {"redis": redis_check, "broker": _check_broker(redis_check), "smtp": _check_smtp()}
    healthy = all(check["ok"] for check in checks.values())
    down = [name for name, check in checks.items() if not check["ok"]]
    return jsonify({"ok": healthy, "down": down, "checks": checks}), 200 if healthy else 503


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
        relay_gauges(registry, relay_statuses())
        up.set(1)
    except redis.RedisError:
        up.set(0)
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def relay_gauges(registry: CollectorRegistry, statuses: list[RelayStatus]) -> None:
    """Each relay's last session and cooldown (MAIL_SERVER, then MAIL_FALLBACK_SERVERS)."""
    ok = Gauge("postroom_relay_last_session_ok",
               "1 if the last session on the relay opened, 0 if it failed", ["relay"],
               registry=registry)
    at = Gauge("postroom_relay_last_session_timestamp_seconds",
               "When the relay's last session was opened or failed", ["relay"],
               registry=registry)
    cooling = Gauge("postroom_relay_cooling_down",
                    "1 while workers skip the relay after a failed session", ["relay"],
                    registry=registry)
    until = Gauge("postroom_relay_cooling_down_until_seconds",
                  "When the relay's cooldown ends (0 when it is not cooling down)", ["relay"],
                  registry=registry)
    for status in statuses:
        if status.outcome is not None:
            ok.labels(relay=status.relay).set(1 if status.outcome == "opened" else 0)
            at.labels(relay=status.relay).set(status.at or 0)
        cooling.labels(relay=status.relay).set(1 if status.cooling_down_until else 0)
        until.labels(relay=status.relay).set(status.cooling_down_until or 0)
