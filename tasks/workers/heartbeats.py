"""Who is alive: workers and beat leave a mark in Redis that ``/healthz`` reads.

- ``postroom:heartbeat:workers``: a sorted set of worker identities scored by the
  time each last reported (every few seconds); identities silent for an hour are
  dropped, and the key itself expires two minutes after the last report. An
  identity is the worker's node name plus a random id drawn when the worker
  process starts (:func:`worker_identity`), so two hosts with the same host name
  and pid (containers where celery is PID 1) are two workers.
- ``postroom:heartbeat:worker:<identity>``: what that worker says of itself (its
  node name, host, the queues it consumes, how many tasks it runs at once), as
  JSON, expiring two minutes after its last report.
- ``postroom:heartbeat:beat``: when beat last published a scheduled task (it
  publishes one every ``CAMPAIGN_SCAN_INTERVAL``), expiring after an hour.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from tasks.delivery.ledger import text
from tasks.shared.keys import key
from tasks.vocabulary import Queue

WORKERS_KEY = key("heartbeat", "workers")
BEAT_KEY = key("heartbeat", "beat")
WORKERS_TTL = 120  # seconds the set (and a worker's card) outlives the last report
FORGET_AFTER = 3600  # seconds after which a silent worker's name is dropped
BEAT_TTL = 3600


def worker_identity(node_name: str) -> str:
    """A worker process's identity: its node name and a random id of its own."""
    return f"{node_name}#{secrets.token_hex(6)}"


def _card_key(identity: str) -> str:
    return key("heartbeat", "worker", identity)


@dataclass(frozen=True)
class WorkerCard:
    """One live worker as it last described itself.

    *queues* is ``None`` for a worker that reported only its name (an older
    version): which queues it consumes is unknown, so it counts for every queue.
    *sessions* is how many tasks it runs at once (threads, or pool processes).
    """

    identity: str
    node: str = ""
    host: str = ""
    queues: tuple[str, ...] | None = None
    sessions: int = 0
    pool: str = ""
    seen_at: float = field(default=0.0, compare=False)

    def consumes(self, queue: str) -> bool:
        return self.queues is None or queue in self.queues

    def as_json(self) -> str:
        return json.dumps({"node": self.node, "host": self.host, "pool": self.pool,
                           "queues": list(self.queues or ()), "sessions": self.sessions})

    @classmethod
    def parse(cls, identity: str, raw: bytes | str | None, seen_at: float) -> WorkerCard:
        if raw is None:
            return cls(identity, node=identity.partition("#")[0], seen_at=seen_at)
        try:
            data: dict[str, Any] = json.loads(raw)
            queues = tuple(str(q) for q in data["queues"])
            sessions = int(data.get("sessions") or 0)
        except (ValueError, KeyError, TypeError):
            return cls(identity, node=identity.partition("#")[0], seen_at=seen_at)
        return cls(identity, node=str(data.get("node") or ""), host=str(data.get("host") or ""),
                   queues=queues, sessions=sessions, pool=str(data.get("pool") or ""),
                   seen_at=seen_at)

    def public(self) -> dict[str, Any]:
        """What ``/healthz`` shows of the worker (to the operator only)."""
        return {"id": self.identity, "node": self.node, "host": self.host,
                "queues": None if self.queues is None else list(self.queues),
                "sessions": self.sessions, "pool": self.pool, "seen_at": self.seen_at}


class Heartbeats:
    """Writes and reads the marks; every call is one or two round trips."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def worker(self, identity: str | WorkerCard, now: float | None = None) -> None:
        """A worker is alive now: its card (or, from an older caller, its name alone)."""
        now = time.time() if now is None else now
        card = identity if isinstance(identity, WorkerCard) else None
        name = card.identity if card is not None else str(identity)
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(WORKERS_KEY, {name: now})
        pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - FORGET_AFTER)
        pipe.expire(WORKERS_KEY, WORKERS_TTL)
        if card is not None:
            pipe.set(_card_key(name), card.as_json(), ex=WORKERS_TTL)
        pipe.execute()

    def forget_worker(self, identity: str) -> None:
        """A worker stopped cleanly: it no longer counts, without waiting for it to age out."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(WORKERS_KEY, identity)
        pipe.delete(_card_key(identity))
        pipe.execute()

    def workers_since(self, since: float) -> list[str]:
        """The identities of the workers that reported at or after *since* (a Unix time)."""
        return [text(name) for name in self.redis.zrangebyscore(WORKERS_KEY, since, "+inf")]

    def live_workers(self, since: float) -> list[WorkerCard]:
        """The workers that reported at or after *since*, each with its card."""
        seen = [(text(name), float(score)) for name, score in
                self.redis.zrangebyscore(WORKERS_KEY, since, "+inf", withscores=True)]
        if not seen:
            return []
        raws = self.redis.mget([_card_key(name) for name, _ in seen])
        return [WorkerCard.parse(name, raw, at) for (name, at), raw in zip(seen, raws, strict=True)]

    def beat(self, now: float | None = None) -> None:
        """Beat is alive: it just published a scheduled task."""
        now = time.time() if now is None else now
        self.redis.set(BEAT_KEY, repr(now), ex=BEAT_TTL)

    def beat_seen(self) -> float | None:
        """When beat last published, or ``None`` if not within the hour."""
        raw = self.redis.get(BEAT_KEY)
        return float(raw) if raw is not None else None


def consumers(workers: Iterable[WorkerCard], queues: Iterable[str]) -> dict[str, list[str]]:
    """For each of *queues* (and any other queue a worker names), who consumes it."""
    workers = list(workers)
    named = [q for worker in workers for q in worker.queues or ()]
    every = list(dict.fromkeys([*queues, *sorted(named)]))
    return {queue: sorted(w.identity for w in workers if w.consumes(queue)) for queue in every}


def sessions_for(workers: Iterable[WorkerCard], queue: str) -> int:
    """How many tasks of *queue* the live workers can run at once (known cards only)."""
    return sum(w.sessions for w in workers if w.queues is not None and queue in w.queues)


BULK_QUEUE = Queue.BULK  # where campaign batches go (celeryconfig.task_routes)
SESSIONS_SEEN_WITHIN = 30.0  # seconds: a worker that reported since then counts


def advertised_sessions(redis: Redis, queue: str, now: float | None = None) -> int:
    """The sessions the live workers consuming *queue* advertise (0 if none reported)."""
    now = time.time() if now is None else now
    return sessions_for(Heartbeats(redis).live_workers(now - SESSIONS_SEEN_WITHIN), queue)
