"""``GET /metrics``: Prometheus text for the whole deployment, read from Redis.

Every series here is cluster-wide: each replica answers the same figures, and no
per-process series (``process_*``, ``python_*``) is served. Scrape one target (the
Service / load-balancer address); the rules and dashboard in ``deploy/`` take
``max without (instance, pod)`` first, so scraping every replica counts nothing twice.

Counters are kept in Redis by the workers (:mod:`tasks.delivery.counters`), so any
web process answers with every worker's and host's figures. Each request builds
a fresh registry. With ``METRICS_TOKEN`` set, only a request that sends it as
``Authorization: Bearer <token>`` is answered (Prometheus:
``authorization: {credentials: ...}``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import redis
from flask import Blueprint, Response, current_app
from flask.typing import ResponseReturnValue
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from tasks.campaigns.store import CampaignStore
from tasks.delivery.counters import DeliveryMetrics
from tasks.delivery.pacing import send_rates
from tasks.delivery.throttle import sessions_open
from tasks.vocabulary import CampaignStatus, Queue
from tasks.workers.heartbeat import PUBLISHED_AT
from tasks.workers.heartbeats import Heartbeats, consumers, sessions_for
from web.health import WORKER_SEEN_WITHIN, relay_names, relay_statuses, routed_queues
from web.operator_access import metrics_token_sent, open_to_anyone

bp = Blueprint("metrics", __name__)

QUEUES: tuple[str, ...] = tuple(Queue)
TASK_STATES = ("SUCCESS", "RETRY", "FAILURE")
CAMPAIGN_STATUSES = tuple(CampaignStatus)


def queue_depths(client: redis.Redis, prefix: str) -> dict[str, int]:
    """Messages waiting in each Celery queue on the Redis broker."""
    return {queue: int(client.llen(prefix + queue)) for queue in QUEUES}


def oldest_waiting_age(client: redis.Redis, prefix: str, queue: str,
                       now: float | None = None) -> float:
    """Seconds the oldest task in *queue* has waited (kombu pushes left, pops right); 0 if none."""
    raw = client.lindex(prefix + queue, -1)
    if raw is None:
        return 0.0
    try:
        published = float(json.loads(raw)["headers"][PUBLISHED_AT])
    except (ValueError, KeyError, TypeError):
        return 0.0  # published by a process without the header
    return max(0.0, (time.time() if now is None else now) - published)


class DeploymentCollector(Collector):
    """Delivery counters, latency, queues, campaigns and heartbeats, read at scrape time."""

    def __init__(self, client: redis.Redis, prefix: str, celery_conf: Any) -> None:
        self.client = client
        self.prefix = prefix
        self.celery_conf = celery_conf

    def collect(self) -> Iterator[Metric]:
        metrics = DeliveryMetrics(self.client)
        deliveries = CounterMetricFamily(
            "postroom_deliveries", "Recipients by kind of mail and delivery outcome",
            labels=["kind", "outcome"])
        for (kind, outcome), n in sorted(metrics.outcomes().items()):
            deliveries.add_metric([kind, outcome], n)
        yield deliveries
        replies = CounterMetricFamily("postroom_smtp_replies",
                                      "The relay's replies about recipients, by class",
                                      labels=["class"])
        for reply, n in metrics.replies().items():
            replies.add_metric([reply], n)
        yield replies
        yield CounterMetricFamily("postroom_smtp_sessions_opened", "SMTP sessions opened",
                                  value=metrics.sessions_opened())
        leases = CounterMetricFamily(
            "postroom_claim_leases", "Claim-lease events: a run taken over after its lease "
            "ran out, a run's record refused (fenced), a lease lost while its run went on",
            labels=["event"])
        for event, n in metrics.lease_events().items():
            leases.add_metric([event], n)
        yield leases
        requeues = CounterMetricFamily(
            "postroom_reconciler_requeues", "Work the reconciler enqueued again, by reason",
            labels=["reason"])
        for reason, n in metrics.requeues().items():
            requeues.add_metric([reason], n)
        yield requeues
        finished = CounterMetricFamily(
            "postroom_tasks_finished", "Tasks that finished a run, by queue and Celery state "
            "(SUCCESS, RETRY, FAILURE)", labels=["queue", "state"])
        counted = {(queue, state): 0 for queue in QUEUES for state in TASK_STATES}
        counted.update(metrics.tasks_finished())
        for (queue, state), n in sorted(counted.items()):
            finished.add_metric([queue, state], n)
        yield finished
        latency = HistogramMetricFamily(
            "postroom_send_duration_seconds",
            "Time from handing a message to the relay to its reply", labels=["kind"])
        for kind, (buckets, total) in metrics.latency().items():
            latency.add_metric([kind], buckets, total)
        yield latency
        yield from self._queues()
        campaigns = GaugeMetricFamily("postroom_campaigns", "Campaigns by status",
                                      labels=["status"])
        counts = CampaignStore(self.client).count_by_status()
        for status in CAMPAIGN_STATUSES:
            campaigns.add_metric([status], counts.get(status, 0))
        yield campaigns
        yield from self._heartbeats()

    def _queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("postroom_queue_depth", "Tasks waiting in a Celery queue",
                                  labels=["queue"])
        age = GaugeMetricFamily("postroom_queue_oldest_task_age_seconds",
                                "How long the oldest task waiting in a queue has waited",
                                labels=["queue"])
        now = time.time()
        for queue, count in queue_depths(self.client, self.prefix).items():
            depth.add_metric([queue], count)
            age.add_metric([queue], oldest_waiting_age(self.client, self.prefix, queue, now))
        yield depth
        yield age

    def _heartbeats(self) -> Iterator[Metric]:
        beats = Heartbeats(self.client)
        live = beats.live_workers(time.time() - WORKER_SEEN_WITHIN)
        within = f"{WORKER_SEEN_WITHIN:.0f} s"
        alive = GaugeMetricFamily(
            "postroom_workers_alive",
            f"Live workers (unique identities that reported in the last {within}) "
            "consuming each queue", labels=["queue"])
        sessions = GaugeMetricFamily(
            "postroom_worker_sessions",
            "Tasks the live workers consuming each queue can run at once (threads x processes)",
            labels=["queue"])
        for queue, names in consumers(live, routed_queues(self.celery_conf)).items():
            alive.add_metric([queue], len(names))
            sessions.add_metric([queue], sessions_for(live, queue))
        yield alive
        yield sessions
        info = GaugeMetricFamily(
            "postroom_worker_info",
            "Each live worker (1), by its unique identity, node name, host and queues",
            labels=["worker", "node", "host", "queues", "pool"])
        for worker in live:
            queues = "*" if worker.queues is None else ",".join(worker.queues)
            info.add_metric([worker.identity, worker.node, worker.host, queues, worker.pool], 1)
        yield info
        yield GaugeMetricFamily(
            "postroom_workers_reporting",
            f"Workers (unique identities) that reported in the last {within}", value=len(live))
        yield GaugeMetricFamily(
            "postroom_beat_last_seen_timestamp_seconds",
            "When beat last published a scheduled task (0 if not within the hour)",
            value=beats.beat_seen() or 0.0)


class _Read(Collector):
    """Families already read (so a Redis error surfaces before the answer is written)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def sending_limits(registry: CollectorRegistry, client: redis.Redis) -> None:
    """The limits shared by all workers (0 = none), and the SMTP sessions held under them."""
    config = current_app.config
    Gauge("postroom_mail_rate_limit", "MAIL_RATE_LIMIT: messages/s across all workers",
          registry=registry).set(config.get("MAIL_RATE_LIMIT") or 0)
    Gauge("postroom_mail_max_connections", "MAIL_MAX_CONNECTIONS across all workers",
          registry=registry).set(config.get("MAIL_MAX_CONNECTIONS") or 0)
    expected = Gauge("postroom_workers_expected",
                     "EXPECTED_WORKERS: live workers each queue should have (0: not set)",
                     ["queue"], registry=registry)
    wanted = dict.fromkeys(QUEUES, 0) | dict(config.get("EXPECTED_WORKERS") or {})
    for queue, count in wanted.items():
        expected.labels(queue=queue).set(count)
    Gauge("postroom_smtp_sessions_open", "SMTP sessions holding a MAIL_MAX_CONNECTIONS slot",
          registry=registry).set(sessions_open(client))
    rate = Gauge("postroom_relay_send_rate", "Transactions/s in force for each relay (learned "
                 "from its throttling replies; +Inf: unlimited)", ["relay"], registry=registry)
    for relay, per_second in send_rates(client, relay_names(),
                                        config.get("MAIL_RATE_LIMIT")).items():
        rate.labels(relay=relay).set(per_second)


def relay_gauges(registry: CollectorRegistry) -> None:
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
    for status in relay_statuses():
        if status.outcome is not None:
            ok.labels(relay=status.relay).set(1 if status.outcome == "opened" else 0)
            at.labels(relay=status.relay).set(status.at or 0)
        cooling.labels(relay=status.relay).set(1 if status.cooling_down_until else 0)
        until.labels(relay=status.relay).set(status.cooling_down_until or 0)


def _metrics_allowed() -> bool:
    return open_to_anyone() or metrics_token_sent()


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    if not _metrics_allowed():
        return Response("send METRICS_TOKEN as 'Authorization: Bearer <token>'\n", status=401,
                        mimetype="text/plain", headers={"WWW-Authenticate": "Bearer"})
    client = current_app.extensions["redis"]
    celery_conf = current_app.extensions["celery"].conf
    prefix = celery_conf.broker_transport_options.get("global_keyprefix", "")
    registry = CollectorRegistry()
    up = Gauge("postroom_redis_up", "1 when Redis answers", registry=registry)
    try:
        client.ping()
        sending_limits(registry, client)
        relay_gauges(registry)
        registry.register(_Read(list(DeploymentCollector(client, prefix, celery_conf).collect())))
        up.set(1)
    except redis.RedisError:
        up.set(0)
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
