"""Delivery counters shared by every worker on every host, kept in Redis.

Each worker adds to a few hashes under ``postroom:metrics:`` (``HINCRBY``), so
``/metrics`` on any web process shows the whole deployment's figures:

- ``outcomes``: ``<kind>:<status>`` -> recipients (kind ``otp``, ``message``,
  ``campaign``; status ``sent``, ``deferred``, ``failed``, ``suppressed``, and
  ``bounced``, added by the bounce desk, :mod:`tasks.bounces.service`, as reports are read);
- ``smtp_replies``: ``2xx``/``4xx``/``5xx`` -> replies the relay gave about a recipient;
- ``sessions``: ``opened`` -> SMTP sessions opened;
- ``leases``: claim-lease events (``taken_over``, ``fenced``, ``lost``);
- ``reconciler``: the reconciler's re-enqueues by reason;
- ``tasks``: ``<queue>:<state>`` -> tasks that finished on a queue (Celery's state
  after the run: ``SUCCESS``, ``RETRY``, ``FAILURE``), one ``HINCRBY`` per task from
  a ``task_postrun`` handler (:func:`tasks.workers.heartbeat.register`);
- ``latency``: ``<kind>:<bucket upper bound>`` -> messages whose SMTP exchange took at
  most that long and more than the bound below it, plus ``<kind>:sum`` (seconds)
  and ``<kind>:count``.

They are counters, as Prometheus counters are: they only grow, and they are
durable (no TTL), so a rate over them is right whichever process is asked.
A :class:`MetricsTally` adds up one batch's figures in memory and writes them
in one round trip when asked (about once a second and at the batch's end).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from redis import Redis
from redis.client import Pipeline

from tasks.delivery.ledger import text
from tasks.shared.keys import key
from tasks.vocabulary import Kind, Status

KINDS = (Kind.OTP, Kind.MESSAGE, Kind.CAMPAIGN)
OUTCOMES = (Status.SENT, Status.DEFERRED, Status.FAILED, Status.SUPPRESSED, Status.BOUNCED)
REPLY_CLASSES = ("2xx", "4xx", "5xx")
# upper bounds (seconds) of the send-latency histogram's buckets; +Inf is implied
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

OUTCOMES_KEY = key("metrics", "outcomes")
REPLIES_KEY = key("metrics", "smtp_replies")
SESSIONS_KEY = key("metrics", "sessions")
LATENCY_KEY = key("metrics", "latency")
LEASES_KEY = key("metrics", "leases")  # claim leases: taken_over, fenced, lost
REQUEUES_KEY = key("metrics", "reconciler")  # the reconciler's re-enqueues, by reason
TASKS_KEY = key("metrics", "tasks")  # tasks finished, by queue and state
LEASE_EVENTS = ("taken_over", "fenced", "lost")
REQUEUE_REASONS = ("batch_lease_gone", "claim_lease_gone", "retry_overdue", "message_idle",
                   "otp_idle", "campaign_idle", "events_idle")


def reply_class(smtp_code: int | None) -> str | None:
    """``"2xx"`` for 250; ``None`` for no reply or a code outside 200-599."""
    if smtp_code is None or not 200 <= smtp_code < 600:
        return None
    return f"{smtp_code // 100}xx"


def bucket_for(seconds: float) -> str:
    """The histogram field a duration falls in: the first bound it does not exceed."""
    for bound in LATENCY_BUCKETS:
        if seconds <= bound:
            return repr(bound)
    return "+Inf"


@dataclass(slots=True)
class MetricsTally:
    """One batch's figures, not yet written."""

    outcomes: Counter[str] = field(default_factory=Counter)
    replies: Counter[str] = field(default_factory=Counter)
    latency: Counter[str] = field(default_factory=Counter)
    latency_sum: dict[str, float] = field(default_factory=dict)
    sessions: int = 0

    def outcome(self, kind: str, status: str, smtp_code: int | None) -> None:
        self.outcomes[f"{kind}:{status}"] += 1
        reply = reply_class(smtp_code)
        if reply is not None:
            self.replies[reply] += 1

    def sent_in(self, kind: str, seconds: float) -> None:
        """One message's SMTP exchange took *seconds*."""
        self.latency[f"{kind}:{bucket_for(seconds)}"] += 1
        self.latency[f"{kind}:count"] += 1
        self.latency_sum[kind] = self.latency_sum.get(kind, 0.0) + seconds

    def __bool__(self) -> bool:
        return bool(self.outcomes or self.replies or self.latency or self.sessions)


class DeliveryMetrics:
    """The counters in Redis: written from tallies, read for ``/metrics``."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def write(self, tally: MetricsTally) -> None:
        """Add *tally* to the counters in one round trip."""
        if not tally:
            return
        pipe = self.redis.pipeline(transaction=False)
        for name, n in tally.outcomes.items():
            pipe.hincrby(OUTCOMES_KEY, name, n)
        for name, n in tally.replies.items():
            pipe.hincrby(REPLIES_KEY, name, n)
        for name, n in tally.latency.items():
            pipe.hincrby(LATENCY_KEY, name, n)
        for kind, seconds in tally.latency_sum.items():
            pipe.hincrbyfloat(LATENCY_KEY, f"{kind}:sum", seconds)
        if tally.sessions:
            pipe.hincrby(SESSIONS_KEY, "opened", tally.sessions)
        pipe.execute()

    def outcomes(self) -> dict[tuple[str, str], int]:
        """``(kind, status) -> recipients``, every known pair present (0 if never seen)."""
        found: dict[tuple[str, str], int] = {(kind, status): 0 for kind in KINDS
                                               for status in OUTCOMES}
        for name, value in self.redis.hgetall(OUTCOMES_KEY).items():
            kind, _, status = text(name).partition(":")
            found[(kind, status)] = int(value)
        return found

    def replies(self) -> dict[str, int]:
        raw = self.redis.hgetall(REPLIES_KEY)
        counts = {text(name): int(value) for name, value in raw.items()}
        return {cls: counts.get(cls, 0) for cls in REPLY_CLASSES}

    def sessions_opened(self) -> int:
        return int(self.redis.hget(SESSIONS_KEY, "opened") or 0)

    def lease_events(self) -> dict[str, int]:
        """Claim-lease events: runs taken over, records refused (fenced), leases lost."""
        return self._named(LEASES_KEY, LEASE_EVENTS)

    def requeues(self) -> dict[str, int]:
        """The reconciler's re-enqueues by reason."""
        return self._named(REQUEUES_KEY, REQUEUE_REASONS)

    def task_finished(self, queue: str, state: str, pipe: Pipeline | None = None) -> None:
        """One task of *queue* finished its run in Celery state *state* (on *pipe* if given:
        the caller executes it)."""
        (pipe or self.redis).hincrby(TASKS_KEY, f"{queue}:{state}", 1)

    def tasks_finished(self) -> dict[tuple[str, str], int]:
        """``(queue, state)`` -> tasks that finished so."""
        found: dict[tuple[str, str], int] = {}
        for name, value in self.redis.hgetall(TASKS_KEY).items():
            queue, _, state = text(name).rpartition(":")
            if queue:
                found[(queue, state)] = int(value)
        return found

    def _named(self, name: str, known: tuple[str, ...]) -> dict[str, int]:
        found = dict.fromkeys(known, 0)
        for field_name, value in self.redis.hgetall(name).items():
            found[text(field_name)] = int(value)
        return found

    def latency(self) -> dict[str, tuple[list[tuple[str, int]], float]]:
        """``kind -> ([(upper bound, cumulative count), ..., ("+Inf", total)], sum)``."""
        raw = {text(name): text(value) for name, value in self.redis.hgetall(LATENCY_KEY).items()}
        histograms: dict[str, tuple[list[tuple[str, int]], float]] = {}
        for kind in KINDS:
            running = 0
            buckets: list[tuple[str, int]] = []
            for bound in (*map(repr, LATENCY_BUCKETS), "+Inf"):
                running += int(raw.get(f"{kind}:{bound}", 0))
                buckets.append((bound, running))
            seconds = float(raw.get(f"{kind}:sum", 0.0))
            histograms[kind] = (buckets, seconds if math.isfinite(seconds) else 0.0)
        return histograms
