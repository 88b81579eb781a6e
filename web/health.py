"""``GET /healthz``: Redis, the broker, the workers, beat and the relays; and the probes.

``/healthz`` opens no SMTP connection: relay states are what the workers last saw
(:mod:`tasks.delivery.relay_state`); workers and beat are alive when their heartbeats
in Redis are recent (:mod:`tasks.workers.heartbeat`), and the workers are healthy only when
every queue tasks are routed to has a live consumer. Any part down is a 503.
Anyone gets ``{"status": "ok"|"unhealthy"}``; the details (``"down"`` naming each
part, workers, hosts, relays, errors) need ``METRICS_TOKEN`` or the operator's
sign-in (:mod:`web.operator_access`).

``/livez`` answers 200 while the process serves requests (it reads nothing);
``/readyz`` answers 200 when Redis and the broker answer, so this web process can
take requests, else 503. Both answer status only.
"""

from __future__ import annotations

import math
import time
from typing import Any

import kombu.exceptions
import redis
from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from tasks.delivery.engine.session import SMTPSettings
from tasks.delivery.pacing import send_rates
from tasks.delivery.relay_state import RelayBoard, RelayStatus
from tasks.workers.heartbeats import Heartbeats, consumers
from web.operator_access import may_see_details

bp = Blueprint("health", __name__)

WORKER_SEEN_WITHIN = 30.0  # seconds: a worker that reported since then is alive
BEAT_SEEN_WITHIN = 30.0  # seconds at least; more when beat's shortest schedule is longer


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
    try:
        rates = send_rates(current_app.extensions["redis"], [s.relay for s in statuses],
                           current_app.config.get("MAIL_RATE_LIMIT"))
    except redis.RedisError:
        rates = {s.relay: math.inf for s in statuses}
    return {"ok": bool(usable), "relays": [
        {**s.public(), "send_rate": rates[s.relay] if rates[s.relay] != math.inf else None}
        for s in statuses]}


def _eager() -> bool:
    return bool(current_app.extensions["celery"].conf.task_always_eager)


def beat_seen_within() -> float:
    """How recent beat's mark must be: three of its shortest schedule, at least 30 s."""
    schedule = current_app.extensions["celery"].conf.beat_schedule or {}
    intervals = [float(entry["schedule"]) for entry in schedule.values()
                 if isinstance(entry.get("schedule"), int | float)]
    return max(BEAT_SEEN_WITHIN, 3 * min(intervals, default=0.0))


def routed_queues(conf: Any) -> list[str]:
    """Every queue tasks can be sent to: ``task_queues``, ``task_routes`` and the default."""
    names = [queue.name for queue in conf.task_queues or ()]
    routes = conf.task_routes if isinstance(conf.task_routes, dict) else {}
    names += [str(route["queue"]) for route in routes.values()
              if isinstance(route, dict) and route.get("queue")]
    names.append(str(conf.task_default_queue))
    return list(dict.fromkeys(names))


def _check_workers() -> dict[str, Any]:
    """Workers reported within the last 30 s, and every routed queue has one consuming it."""
    if _eager():
        return {"ok": True, "note": "tasks run eagerly, in the process that queues them"}
    try:
        live = Heartbeats(current_app.extensions["redis"]).live_workers(
            time.time() - WORKER_SEEN_WITHIN)
    except redis.RedisError:
        return {"ok": True, "note": "heartbeats are kept in Redis, which cannot be reached"}
    by_queue = consumers(live, routed_queues(current_app.extensions["celery"].conf))
    without = [queue for queue, names in by_queue.items() if not names]
    check: dict[str, Any] = {"ok": bool(live) and not without,
                             "seen": sorted(worker.identity for worker in live),
                             "workers": [worker.public() for worker in live],
                             "queues": by_queue, "within_seconds": WORKER_SEEN_WITHIN}
    if not live:
        check["error"] = f"no worker reported in the last {WORKER_SEEN_WITHIN:.0f} s"
    elif without:
        check["queues_without_consumer"] = without
        check["error"] = "no live worker consumes " + ", ".join(without)
    return check


def _check_beat() -> dict[str, Any]:
    """Beat published a scheduled task recently."""
    if _eager():
        return {"ok": True, "note": "tasks run eagerly, in the process that queues them"}
    try:
        last = Heartbeats(current_app.extensions["redis"]).beat_seen()
    except redis.RedisError:
        return {"ok": True, "note": "heartbeats are kept in Redis, which cannot be reached"}
    within = beat_seen_within()
    age = None if last is None else max(0.0, time.time() - last)
    check: dict[str, Any] = {"ok": age is not None and age <= within, "last_seen": last,
                             "within_seconds": within}
    if not check["ok"]:
        check["error"] = (f"beat has published nothing in the last {within:.0f} s"
                          if age is None else f"beat last published {age:.0f} s ago")
    return check


def _status(healthy: bool) -> dict[str, Any]:
    return {"status": "ok" if healthy else "unhealthy"}


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    redis_check = _check_redis()
    checks = {"redis": redis_check, "broker": _check_broker(redis_check),
              "workers": _check_workers(), "beat": _check_beat(), "smtp": _check_smtp()}
    healthy = all(check["ok"] for check in checks.values())
    code = 200 if healthy else 503
    if not may_see_details():
        return jsonify(_status(healthy)), code
    down = [name for name, check in checks.items() if not check["ok"]]
    return jsonify({**_status(healthy), "ok": healthy, "down": down, "checks": checks}), code


@bp.get("/livez")
def livez() -> ResponseReturnValue:
    return jsonify(_status(True)), 200


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    redis_check = _check_redis()
    ready = redis_check["ok"] and _check_broker(redis_check)["ok"]
    return jsonify(_status(ready)), 200 if ready else 503
