"""Which worker runs which task now, so a dead worker's tasks can be marked failed.

One hash, ``postroom:running``: ``<worker identity> <task id>`` -> task name, set when a
worker starts a task (``task_prerun``) and removed when it finishes (``task_postrun``, in
the same round trip as the finished-task count). It holds only the tasks running at this
moment. A worker that stops reporting (:mod:`tasks.workers.heartbeats`) leaves its entries;
the reconciler (:func:`tasks.workers.lost_tasks.sweep`) takes them and reports those tasks failed.
A pool process forked before the worker drew its identity lists nothing (the threads pool,
which Postroom's workers use, always does).
"""

from __future__ import annotations

from redis import Redis
from redis.client import Pipeline

from tasks.delivery.ledger import text
from tasks.shared.keys import key

RUNNING_KEY = key("running")


def _field(identity: str, task_id: str) -> str:
    return f"{identity} {task_id}"


class RunningTasks:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def started(self, identity: str, task_id: str, name: str) -> None:
        self.redis.hset(RUNNING_KEY, _field(identity, task_id), name)

    def finished(self, pipe: Pipeline, identity: str, task_id: str) -> None:
        """Queue the removal on *pipe* (the caller's round trip)."""
        pipe.hdel(RUNNING_KEY, _field(identity, task_id))

    def of_workers_not_in(self, live: set[str]) -> dict[str, str]:
        """Task id -> name, for the tasks left by workers not in *live*."""
        found = {}
        for raw, name in self.redis.hgetall(RUNNING_KEY).items():
            identity, _, task_id = text(raw).partition(" ")
            if identity not in live and task_id:
                found[task_id] = text(name)
        return found

    def forget(self, task_ids: dict[str, str], live: set[str]) -> None:
        """Drop the entries of *task_ids* held by workers not in *live*."""
        fields = [raw for raw in self.redis.hkeys(RUNNING_KEY)
                  if (parts := text(raw).partition(" "))[2] in task_ids
                  and parts[0] not in live]
        if fields:
            self.redis.hdel(RUNNING_KEY, *fields)
