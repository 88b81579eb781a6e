"""Who is alive: workers and beat leave a mark in Redis that ``/healthz`` reads.

- ``postroom:heartbeat:workers``: a sorted set of worker host names scored by the
  time each last reported (every few seconds); names silent for an hour are
  dropped, and the key itself expires two minutes after the last report.
- ``postroom:heartbeat:beat``: when beat last published a scheduled task (it
  publishes one every ``CAMPAIGN_SCAN_INTERVAL``), expiring after an hour.
"""

from __future__ import annotations

import time

from redis import Redis

from tasks.stores import key
from tasks.stores.ledger import text

WORKERS_KEY = key("heartbeat", "workers")
BEAT_KEY = key("heartbeat", "beat")
WORKERS_TTL = 120  # seconds the set outlives the last worker's report
FORGET_AFTER = 3600  # seconds after which a silent worker's name is dropped
BEAT_TTL = 3600


class Heartbeats:
    """Writes and reads the marks; every call is one round trip."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def worker(self, hostname: str, now: float | None = None) -> None:
        """*hostname* (a worker's node name) is alive now."""
        now = time.time() if now is None else now
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(WORKERS_KEY, {hostname: now})
        pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - FORGET_AFTER)
        pipe.expire(WORKERS_KEY, WORKERS_TTL)
        pipe.execute()

    def workers_since(self, since: float) -> list[str]:
        """The workers that reported at or after *since* (a Unix time)."""
        return [text(name) for name in self.redis.zrangebyscore(WORKERS_KEY, since, "+inf")]

    def beat(self, now: float | None = None) -> None:
        """Beat is alive: it just published a scheduled task."""
        now = time.time() if now is None else now
        self.redis.set(BEAT_KEY, repr(now), ex=BEAT_TTL)

    def beat_seen(self) -> float | None:
        """When beat last published, or ``None`` if not within the hour."""
        raw = self.redis.get(BEAT_KEY)
        return float(raw) if raw is not None else None
