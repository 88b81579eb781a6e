"""Per-recipient delivery state of a message or campaign, moved atomically.

A delivery (a message id or a campaign id) has recipients numbered from 0.
Each recipient's record is compact JSON in one hash; an index per status (a
sorted set scored by recipient number), a count per status and a retry
schedule for deferred recipients are kept beside it. Every transition is one
Lua script (``tasks/delivery/lua/``), so they never disagree and two workers can
never both hold the same recipient:

    queued/deferred --claim--> sending --finish--> sent | deferred | failed | suppressed

A claim carries a token; the claim stays good while the token's lease key
(:mod:`tasks.delivery.leases`) lives. A worker that dies stops renewing its
lease, and its recipients can be claimed again as soon as the lease is gone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from weakref import WeakKeyDictionary

from redis import Redis
from redis.client import Pipeline
from redis.commands.core import Script

from tasks import vocabulary
from tasks.shared.keys import key
from tasks.vocabulary import Status

STATUSES = tuple(Status)
UNSETTLED = vocabulary.UNSETTLED  # still to be decided
LEASE_PREFIX = key("lease") + ":"
FINISH_FIXED_ARGS = 6  # finish.lua's arguments before the per-recipient ones


def _script(name: str) -> str:
    folder = resources.files("tasks.delivery") / "lua"
    common = (folder / "ledger_common.lua").read_text()
    return "\n".join((vocabulary.lua_table(), common, (folder / f"{name}.lua").read_text()))


SCRIPTS = {name: _script(name) for name in ("claim", "finish", "release", "move", "bounce")}
_REGISTERED: WeakKeyDictionary[Redis, dict[str, Script]] = WeakKeyDictionary()


def _registered(redis: Redis) -> dict[str, Script]:
    """The scripts bound to *redis*, made once per client: each one hashes its source,
    which every ledger (one per message a request stores) would otherwise do again."""
    scripts = _REGISTERED.get(redis)
    if scripts is None:
        scripts = {name: redis.register_script(source) for name, source in SCRIPTS.items()}
        _REGISTERED[redis] = scripts
    return scripts


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to record for one claimed recipient."""

    index: int
    status: str
    smtp_code: int | None = None
    error: str | None = None
    counted: bool = True  # the relay answered about this recipient: one attempt used
    retry_at: float = 0.0  # for a deferral: when to try again

    def args(self) -> list[str]:
        return [str(self.index), self.status,
                "" if self.smtp_code is None else str(self.smtp_code), self.error or "",
                "1" if self.counted else "0", repr(self.retry_at)]


@dataclass(slots=True)
class RecipientRecord:
    """One recipient's delivery state."""

    index: int
    email: str
    status: str = Status.QUEUED
    attempts: int = 0
    smtp_code: int | None = None
    error: str | None = None
    updated_at: float | None = None
    vars: dict[str, Any] = field(default_factory=dict)
    deferrals: int = 0
    retry_at: float | None = None

    @classmethod
    def load(cls, index: int, raw: bytes | str) -> RecipientRecord:
        data = json.loads(raw)
        variables = data.get("v")
        return cls(index=index, email=data["e"], status=data["s"],
                   attempts=int(data.get("a") or 0), smtp_code=data.get("c"),
                   error=data.get("r"), updated_at=data.get("u"),
                   vars=variables if isinstance(variables, dict) else {},
                   deferrals=int(data.get("d") or 0), retry_at=data.get("n"))

    def dump(self) -> str:
        """Compact JSON; what is empty or zero is left out (a recipient is kept in bytes)."""
        data: dict[str, Any] = {"e": self.email, "s": self.status}
        for name, value in (("a", self.attempts), ("d", self.deferrals), ("v", self.vars),
                            ("c", self.smtp_code), ("r", self.error), ("u", self.updated_at),
                            ("n", self.retry_at)):
            if value:
                data[name] = value
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    def public(self) -> dict[str, Any]:
        """The shape the HTTP API shows."""
        shown: dict[str, Any] = {"email": self.email, "status": self.status,
                                 "attempts": self.attempts}
        if self.smtp_code is not None:
            shown["smtp_code"] = self.smtp_code
        if self.error:
            shown["error"] = self.error
        return shown


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """What a claim got: records now ours, and recipients another live claim holds."""

    claimed: list[RecipientRecord]
    busy_until: float | None  # when the longest of the other claims' leases runs out
    fenced: bool = False  # the caller's run does not hold the lease: nothing was claimed


class DeliveryLedger:
    """Recipient state for one delivery (message or campaign)."""

    def __init__(self, redis: Redis, delivery_id: str) -> None:
        self.redis = redis
        self.delivery_id = delivery_id
        self.records_key = key("delivery", delivery_id, "recipients")
        self.counts_key = key("delivery", delivery_id, "counts")
        self.index_prefix = key("delivery", delivery_id, "status") + ":"
        self.retry_key = key("delivery", delivery_id, "retry")
        self.keys = [self.records_key, self.counts_key, self.index_prefix, self.retry_key]
        self.scripts = _registered(redis)

    def all_keys(self) -> list[str]:
        return [self.records_key, self.counts_key, self.retry_key,
                *(self.index_prefix + s for s in STATUSES)]

    def add(self, records: Iterable[RecipientRecord], *, start: int = 0,
            ttl: int | None = None, pipeline: Pipeline | None = None) -> int:
        """Store new recipients numbered from *start*; return the next free number.

        With *ttl*, the ledger's keys expire after that many seconds (set in the same
        transaction; a key made later copies the records' TTL). With *pipeline*, the
        commands join it and the caller executes it."""
        number = start
        pipe = pipeline if pipeline is not None else self.redis.pipeline(transaction=True)
        added: dict[str, int] = {}
        for record in records:
            record.index = number
            pipe.hset(self.records_key, str(number), record.dump())
            pipe.zadd(self.index_prefix + record.status, {str(number): number})
            added[record.status] = added.get(record.status, 0) + 1
            number += 1
        for status, count in added.items():
            pipe.hincrby(self.counts_key, status, count)
        if ttl is not None:
            for name in (self.records_key, self.counts_key,
                         *(self.index_prefix + status for status in added)):
                pipe.expire(name, ttl)
        if pipeline is None:
            pipe.execute()
        return number

    def expire(self, seconds: int, *, keep_counts: bool = False) -> None:
        """Let the records go after *seconds*; with *keep_counts* the counts stay."""
        pipe = self.redis.pipeline(transaction=True)
        for name in self.all_keys():
            if keep_counts and name == self.counts_key:
                pipe.persist(name)
            else:
                pipe.expire(name, seconds)
        pipe.execute()

    def claim(self, indices: Sequence[int], token: str, run: str) -> ClaimResult:
        """Move claimable recipients to ``sending`` under *token*, for *run*, which must hold
        the token's lease (:class:`~tasks.delivery.leases.ClaimLease`); else ``fenced``."""
        reply = self.scripts["claim"](self.keys, self.claim_args(indices, token, run))
        return claim_result(reply)

    def claim_args(self, indices: Sequence[int], token: str, run: str) -> list[Any]:
        return [token, run, repr(time.time()), LEASE_PREFIX, *map(str, indices)]

    def finish(self, token: str, run: str, outcomes: Iterable[Outcome], *, max_attempts: int,
               deadline: float | None = None) -> list[str]:
        """Record outcomes for recipients *token* holds, for *run* (the lease's holder).

        Returns the status set per recipient, ``lost:<n>`` where another claim
        had taken recipient *n* over, or ``fenced:<n>`` for every recipient when
        *run* no longer holds the lease (nothing is recorded).
        """
        args = self.finish_args(token, run, outcomes, max_attempts=max_attempts,
                                deadline=deadline)
        if len(args) == FINISH_FIXED_ARGS:
            return []
        return [text(s) for s in self.scripts["finish"](self.keys, args)]

    @staticmethod
    def finish_args(token: str, run: str, outcomes: Iterable[Outcome], *, max_attempts: int,
                    deadline: float | None) -> list[str]:
        args = [token, run, repr(time.time()), str(max_attempts), repr(deadline or 0),
                LEASE_PREFIX]
        for outcome in outcomes:
            args += outcome.args()
        return args

    def release(self, token: str, run: str, indices: Sequence[int]) -> int:
        """Give back recipients *token* claimed and never sent; return how many, or -1 when
        *run* no longer holds the lease (then nothing is given back)."""
        if not indices:
            return 0
        return int(self.scripts["release"](self.keys, [token, run, repr(time.time()),
                                                       LEASE_PREFIX, *map(str, indices)]))

    def bounce(self, index: int, smtp_code: int | None, reason: str) -> str | None:
        """Mark a recipient the relay had accepted ``bounced``; the status it had, or
        ``None`` when it was not one a bounce can follow (queued, failed, cancelled...)."""
        was = self.scripts["bounce"](self.keys, [repr(time.time()), str(index),
                                                 "" if smtp_code is None else str(smtp_code),
                                                 reason])
        return text(was) if was else None

    def move(self, from_status: str, to_status: str, *, page: int = 1000) -> int:
        """Move every recipient in *from_status* to *to_status*, a page at a time."""
        total = 0
        while True:
            moved = int(self.scripts["move"](self.keys, [from_status, to_status,
                                                         repr(time.time()), page]))
            total += moved
            if moved < page:
                return total

    def counts(self) -> dict[str, int]:
        raw = self.redis.hgetall(self.counts_key)
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        for name, value in raw.items():
            counts[text(name)] = int(value)
        return counts

    @staticmethod
    def every(raw: dict[bytes, bytes]) -> list[RecipientRecord]:
        """Every recipient's record, by number, from *raw*: the records hash
        (:attr:`records_key`), read with something else in one pipeline."""
        return sorted((RecipientRecord.load(int(number), value) for number, value in raw.items()),
                      key=lambda record: record.index)

    def get(self, indices: Sequence[int]) -> list[RecipientRecord]:
        if not indices:
            return []
        raws = self.redis.hmget(self.records_key, [str(i) for i in indices])
        return [RecipientRecord.load(i, raw) for i, raw in zip(indices, raws, strict=True)
                if raw is not None]

    def due_for_retry(self, now: float, *, limit: int = 1000) -> list[int]:
        """Deferred recipients whose retry time has come."""
        members = self.redis.zrange(self.retry_key, "-inf", now, byscore=True, offset=0,
                                    num=limit)
        return [int(m) for m in members]

    def next_retry(self) -> float | None:
        """When the earliest deferred recipient is due, if any is."""
        first = self.redis.zrange(self.retry_key, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    def orphaned(self, *, limit: int = 1000) -> list[int]:
        """Recipients left ``sending`` under a claim whose lease is gone (its worker died)."""
        return [i for indices in self.orphaned_claims(limit=limit).values() for i in indices]

    def orphaned_claims(self, *, limit: int = 1000) -> dict[str, list[int]]:
        """The claims whose lease is gone: run token -> the recipients it left ``sending``."""
        sending = self.index_prefix + Status.SENDING
        members = [int(m) for m in self.redis.zrange(sending, 0, limit - 1)]
        if not members:
            return {}
        raws = self.redis.hmget(self.records_key, [str(i) for i in members])
        tokens = {i: str(json.loads(raw).get("t") or "")
                  for i, raw in zip(members, raws, strict=True) if raw is not None}
        distinct = sorted(set(tokens.values()))
        pipe = self.redis.pipeline(transaction=False)
        for token in distinct:
            pipe.exists(LEASE_PREFIX + token)
        alive = {token for token, found in zip(distinct, pipe.execute(), strict=True) if found}
        dead: dict[str, list[int]] = {}
        for i, token in tokens.items():
            if token not in alive:
                dead.setdefault(token, []).append(i)
        return dead

    def page(self, *, status: str | None = None, cursor: int = 0,
             limit: int = 100) -> tuple[list[RecipientRecord], int | None]:
        """Recipients from number *cursor* on (optionally of one status); and the next cursor."""
        if status is None:
            indices = list(range(cursor, cursor + limit + 1))
            records = self.get(indices)
        else:
            members = self.redis.zrange(self.index_prefix + status, cursor, "+inf",
                                        byscore=True, offset=0, num=limit + 1)
            records = self.get([int(m) for m in members])
        more = len(records) > limit
        records = records[:limit]
        return records, (records[-1].index + 1 if more and records else None)

    def iter_indices(self, status: str, *, page: int = 1000) -> Iterator[int]:
        """Recipient numbers in *status*, read a page at a time."""
        cursor = 0
        while True:
            members = self.redis.zrange(self.index_prefix + status, cursor, "+inf",
                                        byscore=True, offset=0, num=page)
            if not members:
                return
            for member in members:
                yield int(member)
            cursor = int(members[-1]) + 1


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def claim_result(reply: list[Any]) -> ClaimResult:
    claimed: list[RecipientRecord] = []
    busy_until: float | None = None
    now = time.time()
    if len(reply) == 2 and int(reply[0]) == -1:
        return ClaimResult([], None, fenced=True)
    for idx, raw in zip(reply[::2], reply[1::2], strict=True):
        value = text(raw)
        if value.startswith("busy:"):
            until = now + int(value[5:]) / 1000
            busy_until = until if busy_until is None else max(busy_until, until)
            continue
        record = RecipientRecord.load(int(idx), value)
        record.status = Status.SENDING
        claimed.append(record)
    return ClaimResult(claimed, busy_until)
