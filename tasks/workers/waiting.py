"""What is waiting in the broker: the tasks published and not yet taken by any worker.

The reconciler must never re-enqueue work whose task is only waiting its turn
(behind a rate limit, or behind other work): it judges a batch lost by its
lease, and a batch with no lease is lost only when its task is not waiting in
the broker either. With Redis as the broker, a queue is a few lists (one per
priority step); a task a worker has taken is no longer in them (it sits in the
transport's unacked set until acknowledged, or until the visibility timeout
gives it back when its worker died).

:func:`read_waiting` reads those lists (at most *limit* entries per queue) and
returns the ``(task name, first argument, fourth argument)`` of each entry, or
``None`` when the transport is not Redis or a queue is longer than *limit*:
then nobody can tell, and the caller must assume the work is waiting.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from celery import Celery
from redis import Redis

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Waiting:
    """The tasks waiting in the broker, by task name and arguments."""

    entries: frozenset[tuple[str, tuple[str, ...]]]
    by_first: frozenset[tuple[str, str]] = frozenset()

    @classmethod
    def of(cls, entries: Iterable[tuple[str, tuple[str, ...]]]) -> Waiting:
        found = frozenset(entries)
        return cls(found, frozenset((task, args[0]) for task, args in found if args))

    def has(self, task: str, item_id: str) -> bool:
        """Whether a *task* whose first argument is *item_id* is waiting."""
        return (task, item_id) in self.by_first

    def has_batch(self, task: str, campaign_id: str, slot: str) -> bool:
        """Whether a campaign batch task ``(campaign_id, first, last, slot)`` is waiting."""
        return (task, campaign_id) in self.by_first and any(
            name == task and len(args) == 4 and args[0] == campaign_id and args[3] == slot
            for name, args in self.entries)


def read_waiting(app: Celery, queues: Iterable[str], *, limit: int = 5000,
                 args: int = 4) -> Waiting | None:
    """The tasks waiting in *queues* (their first *args* arguments, as text), or ``None``
    when that cannot be known (not a Redis broker, or a queue holds more than *limit*)."""
    entries: set[tuple[str, tuple[str, ...]]] = set()
    with app.connection_for_read() as connection:
        channel: Any = connection.default_channel
        client = getattr(channel, "client", None)
        q_for_pri = getattr(channel, "_q_for_pri", None)
        steps = getattr(channel, "priority_steps", None)
        if client is None or q_for_pri is None or not steps:
            return None
        prefix = str(getattr(channel, "global_keyprefix", "") or "")
        plain = Redis(connection_pool=client.connection_pool)  # keys prefixed by hand
        names = sorted({prefix + q_for_pri(queue, step) for queue in queues for step in steps})
        pipe = plain.pipeline(transaction=False)
        for name in names:
            pipe.lrange(name, 0, limit)
        for items in pipe.execute():
            if len(items) > limit:
                return None
            entries.update(_entry(item, args) for item in items)
    entries.discard(("", ()))
    return Waiting.of(entries)


def _entry(raw: bytes | str, count: int) -> tuple[str, tuple[str, ...]]:
    """``(task name, first *count* arguments as text)`` of one queued message."""
    try:
        message = json.loads(raw)
        task = str(message["headers"]["task"])
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        arguments = json.loads(body)[0]
    except (ValueError, KeyError, TypeError, IndexError) as err:
        log.debug("a queued message could not be read: %s", err)
        return "", ()
    return task, tuple(str(a) for a in arguments[:count])
