"""Claim leases: a claim on recipients stays good while its token's lease key lives.

A batch holds one lease for its token (``postroom:lease:<token>``), a short-lived
key that a background thread renews while the batch runs. The ledger treats a
recipient ``sending`` under a token with no lease key as abandoned, so a worker
that dies without warning gives its recipients back within one lease, however
slow the relay was, and a live batch is never taken over.

The key holds ``host:pid:run``. A later run of the same batch (a redelivered
or retried task has the same token) takes the lease over at once when the
holder is a process on this host that no longer exists, or a run of this very
process that has ended; otherwise it waits for the lease to run out.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from redis import Redis, RedisError

from tasks.stores.ledger import LEASE_PREFIX, text

log = logging.getLogger(__name__)

_TAKE = """
-- KEYS[1]: lease; ARGV: holder, ttl_ms, holder to replace or ''
local held = redis.call('GET', KEYS[1])
if not held or held == ARGV[3] or held == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, ''}
end
return {0, held, redis.call('PTTL', KEYS[1])}
"""

_RENEW = """
-- KEYS: leases; ARGV: ttl_ms, then one holder per key. Returns the keys no longer held.
local lost = {}
for i, name in ipairs(KEYS) do
  if redis.call('GET', name) == ARGV[i + 1] then
    redis.call('PEXPIRE', name, ARGV[1])
  else
    table.insert(lost, name)
  end
end
return lost
"""

_DROP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_HOST = socket.gethostname()


class LeaseBusy(Exception):
    """Another live run holds the lease; it runs out at *until* unless renewed."""

    def __init__(self, token: str, until: float) -> None:
        super().__init__(f"claim {token} is held by a live run")
        self.until = until


@dataclass(slots=True)
class _Held:
    redis: Redis
    name: str
    holder: str
    ttl_ms: int


class _Keeper:
    """One thread per process renews every lease the process holds."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: dict[str, _Held] = {}
        self.pid = os.getpid()
        self.thread: threading.Thread | None = None
        self.wake = threading.Event()

    def add(self, lease: _Held) -> None:
        with self.lock:
            if self.pid != os.getpid():  # forked: the parent's leases and thread are not ours
                self.pid, self.held, self.thread = os.getpid(), {}, None
            self.held[lease.holder] = lease
            self.wake.set()
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, daemon=True,
                                               name="postroom-claim-leases")
                self.thread.start()

    def remove(self, holder: str) -> None:
        with self.lock:
            self.held.pop(holder, None)

    def running(self, holder: str) -> bool:
        with self.lock:
            return holder in self.held

    def _run(self) -> None:
        renewed = time.monotonic()
        while True:
            with self.lock:
                leases = list(self.held.values())
            # every lease is renewed at least three times in its life
            due = renewed + min((lease.ttl_ms for lease in leases), default=3000) / 3000
            if self.wake.wait(max(0.0, due - time.monotonic())):
                self.wake.clear()  # a lease came: perhaps a shorter one; look again
                continue
            renewed = time.monotonic()
            self._renew(leases)

    def _renew(self, leases: list[_Held]) -> None:
        by_server: dict[int, list[_Held]] = {}
        for lease in leases:
            by_server.setdefault(id(lease.redis), []).append(lease)
        for group in by_server.values():
            try:
                lost = group[0].redis.eval(_RENEW, len(group), *(g.name for g in group),
                                           max(g.ttl_ms for g in group),
                                           *(g.holder for g in group))
            except RedisError as err:
                log.warning("could not renew %d claim lease(s): %s", len(group), err)
                continue
            for name in map(text, lost):
                if any(g.name == name and self.running(g.holder) for g in group):
                    log.warning("claim lease %s was lost while its batch ran", name)


_keeper = _Keeper()


class ClaimLease:
    """Hold the lease for *token* while a batch runs (a context manager).

    Raises :class:`LeaseBusy` on entry when another live run holds it.
    """

    def __init__(self, redis: Redis, token: str, ttl: float = 30.0) -> None:
        self.redis = redis
        self.token = token
        self.name = LEASE_PREFIX + token
        self.ttl_ms = max(100, round(ttl * 1000))
        self.holder = f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"

    def __enter__(self) -> ClaimLease:
        taken, *rest = self.redis.eval(_TAKE, 1, self.name, self.holder, self.ttl_ms, "")
        if not taken:
            held, left_ms = text(rest[0]), int(rest[1])
            if not _abandoned(held):
                raise LeaseBusy(self.token, time.time() + max(left_ms, 0) / 1000)
            log.info("taking over claim %s from a run that ended (%s)", self.token, held)
            taken, *rest = self.redis.eval(_TAKE, 1, self.name, self.holder, self.ttl_ms, held)
            if not taken:
                raise LeaseBusy(self.token, time.time() + max(int(rest[1]), 0) / 1000)
        _keeper.add(_Held(self.redis, self.name, self.holder, self.ttl_ms))
        return self

    def __exit__(self, *exc: object) -> None:
        _keeper.remove(self.holder)
        try:
            self.redis.eval(_DROP, 1, self.name, self.holder)
        except RedisError as err:  # it runs out by itself
            log.warning("could not release claim lease %s: %s", self.token, err)


def _abandoned(holder: str) -> bool:
    """Whether *holder* (``host:pid:run``) is a run on this host that has ended."""
    parts = holder.rsplit(":", 2)
    if len(parts) != 3:
        return False
    host, pid_text, _ = parts
    if host != _HOST or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return not _keeper.running(holder)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False
