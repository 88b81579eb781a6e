"""Claim leases: fencing tokens that keep one run of a batch, and only one, in charge.

A batch's claims carry the batch's token (the same for every run of one batch:
a redelivered or retried task). Which *run* may act on them is decided by the
lease ``postroom:lease:<token>``, a short-lived key holding the run's own id
(:func:`run_id`: host name, a per-process random id and a per-run one). The
ledger's claim, finish and release scripts check, atomically, that the caller's
run id is the one the lease holds; a run that lost its lease therefore records
nothing and hands nothing back, and the run that took over owns the claims.

One thread per process renews every lease the process holds (three times per
lease). A lease is taken when it is free (held by nobody, or run out), or when
its holder is *provably* a dead process of this very kernel: the lease records
the holder's boot id, pid namespace, pid and process start time, and only a
process with the same boot id and pid namespace whose pid is gone (or now
belongs to a process started at another time) counts as dead. A host name or a
pid alone proves nothing (two hosts may share both), so a holder anywhere else
keeps its lease until it runs out.

The holder keeps its own, conservative view of its lease: it counts the lease
from the moment it *sent* the last renewal that Redis confirmed, and trusts it
for :data:`TRUSTED` of its length. Before each message a run asks
:meth:`ClaimLease.usable`; when a renewal is overdue (Redis slow, paused or
unreachable) that question is settled by a renewal of its own, and a run that
cannot get one stops sending, before another run could take the lease over.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

from redis import Redis, RedisError

from tasks.delivery.counters import LEASES_KEY
from tasks.delivery.ledger import LEASE_PREFIX, text
from tasks.shared.keys import key

log = logging.getLogger(__name__)

TRUSTED = 0.8  # of a lease's length, counted from the sending of its last confirmed renewal

_TAKE = """
-- KEYS: lease, its 'a run began' mark; ARGV: run, ttl_ms, mark_ms, holder to replace or ''.
-- Take the lease if it is free (or already ours, or held by the holder to replace). Returns
-- {1, 1 if an earlier run began and never ended, else 0} when taken, {0, holder, ms left}
-- when busy.
local held = redis.call('GET', KEYS[1])
if not held or held == ARGV[1] or held == ARGV[4] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  local earlier = redis.call('EXISTS', KEYS[2])
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
  return {1, earlier}
end
return {0, held, redis.call('PTTL', KEYS[1])}
"""

_RENEW = """
-- KEYS: leases; ARGV: ttl_ms, then one run per key. Returns the keys no longer held.
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
-- KEYS: lease, its mark; ARGV: run. The run ended: the lease and the mark go (if ours).
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1], KEYS[2]) end
return 0
"""

_PROCESS: dict[str, object] = {"pid": os.getpid(), "id": uuid.uuid4().hex[:12]}


def process_id() -> str:
    """This process's identity: host name and a random id made when the process started
    (again after a fork), never a bare pid."""
    if _PROCESS["pid"] != os.getpid():
        _PROCESS.update(pid=os.getpid(), id=uuid.uuid4().hex[:12])
    return f"{socket.gethostname()}:{_PROCESS['id']}"


def run_id() -> str:
    """A new run's identity: the process's, a random id of the run's own, and what proves
    whether its process still lives (``|boot id:pid namespace:pid:start time``)."""
    return f"{process_id()}:{uuid.uuid4().hex[:12]}|{_own_proof()}"


def _own_proof() -> str:
    """:func:`_proof` of this process, read from ``/proc`` once per process (again after a
    fork): its boot id, pid namespace and start time do not change while it lives, and
    reading three files for every claim took about 60 µs here."""
    pid = os.getpid()
    if _PROCESS.get("proof_pid") != pid:
        _PROCESS.update(proof_pid=pid, proof=_proof(pid))
    return str(_PROCESS["proof"])


def _read(path: str) -> str:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return ""


def _started(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' if there is no such process)."""
    stat = _read(f"/proc/{pid}/stat")
    fields = stat.rsplit(")", 1)[-1].split() if stat else []
    return fields[19] if len(fields) > 19 else ""


def _kernel() -> str:
    """This kernel and pid namespace: ``boot id:pid namespace`` ('' where unknown)."""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{boot}:{namespace}" if boot and namespace else ""


def _proof(pid: int) -> str:
    kernel, started = _kernel(), _started(pid)
    return f"{kernel}:{pid}:{started}" if kernel and started else ""


def provably_dead(holder: str) -> bool:
    """Whether *holder* (a run id) was a process of this kernel and pid namespace that has
    ended: its pid is gone, or belongs to a process that started at another time."""
    _, _, proof = holder.partition("|")
    kernel, _, rest = proof.rpartition(":")  # kernel:pid, then the start time
    kernel, _, pid_text = kernel.rpartition(":")
    if not kernel or kernel != _kernel() or not pid_text.isdigit() or not rest:
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return holder not in _keeper.runs()  # a run of this process that has ended
    return _started(pid) != rest


class LeaseBusy(Exception):
    """Another run holds the lease; it runs out at *until* unless renewed."""

    def __init__(self, token: str, until: float) -> None:
        super().__init__(f"claim {token} is held by a live run")
        self.until = until


@dataclass(slots=True)
class _Held:
    redis: Redis
    name: str
    run: str
    ttl_ms: int
    confirmed: float  # monotonic time the last confirmed renewal (or the take) was sent
    lost: bool = False
    failing: bool = False  # the last renewal did not get an answer
    ended: bool = False  # its run gave it back: a renewal that finds it gone says nothing
    lock: threading.Lock = field(default_factory=threading.Lock)

    def trusted_until(self) -> float:
        return self.confirmed + self.ttl_ms / 1000 * TRUSTED

    def confirm(self, sent: float) -> None:
        with self.lock:
            self.confirmed = max(self.confirmed, sent)
            self.failing = False


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
            self.held[lease.run] = lease
            self.wake.set()
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._run, daemon=True,
                                               name="postroom-claim-leases")
                self.thread.start()

    def remove(self, run: str) -> None:
        with self.lock:
            self.held.pop(run, None)

    def runs(self) -> set[str]:
        with self.lock:
            return set(self.held) if self.pid == os.getpid() else set()

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
            with self.lock:  # only what is still held now: a run may have ended meanwhile
                leases = list(self.held.values())
            if leases:
                renew(leases)


def renew(leases: list[_Held]) -> None:
    """Renew *leases* (one script per Redis server); mark those another run took over."""
    by_server: dict[int, list[_Held]] = {}
    for lease in leases:
        by_server.setdefault(id(lease.redis), []).append(lease)
    for group in by_server.values():
        sent = time.monotonic()
        try:
            lost = group[0].redis.eval(_RENEW, len(group), *(g.name for g in group),
                                       max(g.ttl_ms for g in group), *(g.run for g in group))
        except RedisError as err:
            for lease in group:
                lease.failing = True
            log.warning("could not renew %d claim lease(s): %s", len(group), err)
            continue
        gone = set(map(text, lost))
        for lease in group:
            if lease.ended:  # given back meanwhile: gone because it ended, not taken over
                continue
            if lease.name in gone:
                if not lease.lost:
                    log.warning("claim lease %s was taken over while its batch ran; it stops",
                                lease.name)
                    count(lease.redis, "lost")
                lease.lost = True
            else:
                lease.confirm(sent)


def count(redis: Redis, event: str, n: int = 1) -> None:
    """Add to a lease counter (``taken_over``, ``fenced``, ``lost``); never fails a batch."""
    try:
        redis.hincrby(LEASES_KEY, event, n)
    except RedisError as err:
        log.debug("lease counter %s not written: %s", event, err)


_keeper = _Keeper()


class ClaimLease:
    """Hold the lease for *token* while one run of a batch goes on (a context manager).

    Raises :class:`LeaseBusy` on entry when another run holds it. :attr:`run` is
    the fencing token every ledger script of this run carries.
    """

    def __init__(self, redis: Redis, token: str, ttl: float = 10.0) -> None:
        self.redis = redis
        self.token = token
        self.name = LEASE_PREFIX + token
        self.mark = key("lease-began", token)
        self.ttl_ms = max(100, round(ttl * 1000))
        self.run = run_id()
        self._held: _Held | None = None

    def __enter__(self) -> ClaimLease:
        sent = time.monotonic()
        taken, *rest = self.redis.eval(_TAKE, 2, self.name, self.mark, self.run, self.ttl_ms,
                                       self.ttl_ms * 60, "")
        if not taken and provably_dead(text(rest[0])):
            log.info("taking over claim %s from a process of this host that ended", self.token)
            sent = time.monotonic()
            taken, *rest = self.redis.eval(_TAKE, 2, self.name, self.mark, self.run,
                                           self.ttl_ms, self.ttl_ms * 60, text(rest[0]))
        if not taken:
            raise LeaseBusy(self.token, time.time() + max(int(rest[1]), 0) / 1000)
        if int(rest[0]):
            log.info("claim %s: an earlier run ended without finishing; taking over", self.token)
            count(self.redis, "taken_over")
        self._held = _Held(self.redis, self.name, self.run, self.ttl_ms, sent)
        _keeper.add(self._held)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._held is not None:
            self._held.ended = True  # a renewal under way may find it gone: not a takeover
        _keeper.remove(self.run)
        try:
            self.redis.eval(_DROP, 2, self.name, self.mark, self.run)
        except RedisError as err:  # it runs out by itself
            log.warning("could not release claim lease %s: %s", self.token, err)

    @property
    def lost(self) -> bool:
        """Another run took the lease over (known from a renewal or a fenced script)."""
        return self._held is not None and self._held.lost

    def fenced(self) -> None:
        """A ledger script refused this run: the lease is no longer ours."""
        if self._held is not None and not self._held.lost:
            self._held.lost = True
            log.warning("claim lease %s is held by another run; this run stops", self.name)
            count(self.redis, "fenced")

    def usable(self) -> bool:
        """Whether this run may send one more message.

        ``True`` while the last confirmed renewal is recent; when a renewal is overdue
        or failed, only after a renewal of its own succeeds now."""
        held = self._held
        if held is None or held.lost:
            return False
        now = time.monotonic()
        fresh = now < held.confirmed + held.ttl_ms / 1000 / 2
        if fresh and not held.failing:
            return True
        renew([held])
        return not held.lost and not held.failing and time.monotonic() < held.trusted_until()
