"""Deliveries the reconciler keeps an eye on: the broker is a doorbell, this is the ledger's list.

Every message, OTP request and queued campaign is entered here when it is
stored, with the time by which it should have moved. A task that finishes
takes its delivery off the list, or puts it back for when its deferred
recipients fall due. Whatever is still listed when its time has passed lost
its task somewhere (a failed publish, a worker host gone, a Redis restart),
and the reconciler enqueues it again; the ledger makes that safe.
"""

from __future__ import annotations

import time

from redis import Redis

from tasks.delivery.ledger import text
from tasks.shared.keys import key

WATCH_KEY = key("watch")
WATCH_AFTER = 60.0  # seconds after it is stored that an untouched delivery is looked at


class Watchlist:
    """``kind:id`` members scored by when to look at them again."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def expect(self, kind: str, item_id: str, by: float) -> None:
        """*item_id* should have moved by *by* (seconds since the epoch)."""
        self.redis.zadd(WATCH_KEY, {f"{kind}:{item_id}": by})

    def done(self, kind: str, item_id: str) -> None:
        self.redis.zrem(WATCH_KEY, f"{kind}:{item_id}")

    def overdue(self, now: float | None = None, *, limit: int = 500) -> list[tuple[str, str]]:
        """``(kind, id)`` of what should have moved by now."""
        members = self.redis.zrange(WATCH_KEY, "-inf", now or time.time(), byscore=True,
                                    offset=0, num=limit)
        found = []
        for member in map(text, members):
            kind, _, item_id = member.partition(":")
            found.append((kind, item_id))
        return found

    def __len__(self) -> int:
        return int(self.redis.zcard(WATCH_KEY))
