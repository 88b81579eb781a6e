"""Waiting until a write has reached a replica: Redis's ``WAIT``.

Redis replicates asynchronously: a write the primary acknowledged can be lost if the
primary dies before a replica has it and Sentinel promotes that replica. Where a
lost write would lose mail (work the API has accepted), call :func:`replicated` after
it: it returns once one replica has every write made before the call, or after
*timeout_ms*. Without replicas (one server, as in development) it costs nothing:
whether the primary has any is asked once a minute.

``WAIT`` makes a lost write unlikely, not impossible (a replica that acknowledged can
still lose the race for promotion); docs/RELIABILITY.md, "Redis failover", gives the
bound with and without it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, cast

from redis import Redis, RedisError

from tasks.shared.keys import key

log = logging.getLogger(__name__)

WAIT_TIMEOUT_MS = 200  # longest a caller waits for a replica before going on
FENCE = key("replication", "fence")  # written before each WAIT
RECHECK_EVERY = 60.0  # seconds between looks at how many replicas the primary has

_replicas: dict[int, tuple[float, int]] = {}  # id(connection pool) -> (checked at, count)
_lock = threading.Lock()


def replica_count(client: Redis) -> int:
    """How many replicas the primary behind *client* has now (cached for a minute)."""
    key = id(client.connection_pool)
    now = time.monotonic()
    with _lock:
        checked = _replicas.get(key)
    if checked is not None and now - checked[0] < RECHECK_EVERY:
        return checked[1]
    info = cast(dict[str, Any], client.info("replication"))
    count = int(info.get("connected_slaves", 0))
    with _lock:
        _replicas[key] = (now, count)
    return count


def replicated(client: Redis, *, timeout_ms: int = WAIT_TIMEOUT_MS) -> bool:
    """Wait until one replica has every write the primary made before this call; True
    when one has (or there is no replica to wait for), False when none acknowledged
    within *timeout_ms*.

    ``WAIT`` counts the writes of its own connection, and a pooled client may run it
    on another connection than the writes: so it follows a one-key write (the fence)
    on the same connection. The primary replicates in order, so a replica that has the
    fence has every write made before it, by any connection. A Redis error is logged
    and reported as False: the writes themselves succeeded.
    """
    try:
        if replica_count(client) == 0:
            return True
        pipe = client.pipeline(transaction=False)
        pipe.incr(FENCE)
        pipe.execute_command("WAIT", 1, timeout_ms)
        _, acknowledged = pipe.execute()
    except RedisError as err:
        log.warning("could not wait for a Redis replica: %s", err)
        return False
    if int(acknowledged) < 1:
        log.warning("no Redis replica acknowledged within %d ms; the last writes could be "
                    "lost if the primary failed now", timeout_ms)
        return False
    return True
