"""One-time codes for email verification: requests, their status, and the code's HMAC.

An OTP request is one JSON record in Redis (``postroom:otp:<id>``) with a TTL
of ``record_ttl``; ids are checked for their form (:func:`is_record_id`) before
they reach a key. The pointer to an address's current request lives apart, under
``postroom:otp-mailbox:<digest>``, so no id a client sends can read it. The
plain code is never stored: the send task draws it with
:meth:`OTPStore.issue`, which keeps only ``HMAC(key, "<id>:<code>")`` and hands
the code to the mail. A retry draws a fresh code and replaces the hash.

Every change is one optimistic transaction (WATCH/MULTI), so two concurrent
submissions of the right code verify exactly once, and a new request for an
address retires the previous one in the same transaction that creates it.

Statuses: ``queued -> sending -> sent | deferred | failed``, then ``verified``,
``expired`` or ``locked``. Every change is stamped in the record's history.

Guessing is bounded per mailbox, not per request: every code compared counts
against the mailbox's :class:`~tasks.codes.guesses.GuessBudget`, across
requests, and once ``guesses_per_day`` wrong codes are spent no code is
compared for that mailbox until the window ends (``docs/SECURITY.md``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from redis import Redis
from redis.exceptions import WatchError

from tasks.codes.guesses import GuessBudget
from tasks.delivery.ledger import DeliveryLedger, RecipientRecord
from tasks.delivery.watch_list import WATCH_AFTER, Watchlist
from tasks.shared.identifiers import is_record_id
from tasks.shared.keys import key
from tasks.shared.mailbox import mailbox_digest
from tasks.vocabulary import CODE_CLOSED, CODE_SENDABLE, DELIVERY_OUTCOMES, CodeStatus, Kind

log = logging.getLogger(__name__)

STATUSES = tuple(CodeStatus)
CLOSED = CODE_CLOSED  # no code works any more
SENDABLE = CODE_SENDABLE
DELIVERY_STATUSES = DELIVERY_OUTCOMES  # what the delivery of its mail can make a request
TYPEABLE = SENDABLE | {CodeStatus.SENT}  # a code that works until it expires


class Verdict(StrEnum):
    """What became of a code submitted for a request."""

    VERIFIED = CodeStatus.VERIFIED
    WRONG = "wrong"
    LOCKED = CodeStatus.LOCKED
    EXPIRED = CodeStatus.EXPIRED
    CLOSED = "closed"
    UNKNOWN = "unknown"
    EXHAUSTED = "exhausted"


_WHITESPACE = re.compile(r"\s+")
MAX_TYPED_CODE = 100  # characters, spaces included


def normalise_code(raw: str, length: int) -> str:
    """The code as typed, spaces removed; :class:`ValueError` unless exactly *length* digits."""
    if len(raw) > MAX_TYPED_CODE:  # before any work on it: no code is typed that long
        raise ValueError(f"must be exactly {length} digits")
    code = _WHITESPACE.sub("", raw)
    if not re.fullmatch(rf"[0-9]{{{length}}}", code, flags=re.ASCII):
        raise ValueError(f"must be exactly {length} digits")
    return code


@dataclass(frozen=True, slots=True)
class OTPPolicy:
    """How codes are made and kept: from ``SECRET_KEY`` and the ``OTP_*`` settings."""

    secret_key: bytes
    length: int = 6
    ttl: int = 600
    max_attempts: int = 5
    record_ttl: int = 24 * 3600
    guesses_per_day: int = 20  # wrong codes compared per mailbox per GuessBudget window

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> OTPPolicy:
        secret = config["SECRET_KEY"]
        secret_bytes = secret.encode() if isinstance(secret, str) else bytes(secret)
        ttl = int(config["OTP_TTL"])
        return cls(secret_key=secret_bytes, length=int(config["OTP_LENGTH"]), ttl=ttl,
                   max_attempts=int(config["OTP_MAX_ATTEMPTS"]),
                   record_ttl=max(int(config.get("OTP_RECORD_TTL") or 0), ttl),
                   guesses_per_day=int(config.get("OTP_GUESSES_PER_DAY") or 20))

    @property
    def hmac_key(self) -> bytes:
        """A key for OTP hashes only, derived from ``SECRET_KEY``."""
        return hmac.new(self.secret_key, b"postroom otp v1", hashlib.sha256).digest()

    def digest(self, request_id: str, code: str) -> str:
        return hmac.new(self.hmac_key, f"{request_id}:{code}".encode(), hashlib.sha256).hexdigest()

    def new_code(self) -> str:
        return f"{secrets.randbelow(10 ** self.length):0{self.length}d}"


@dataclass(slots=True)
class OTPRequest:
    """One verification request, as stored."""

    id: str
    email: str
    status: str
    created_at: float
    updated_at: float
    expires_at: float
    max_attempts: int
    attempts: int = 0  # wrong codes submitted
    code_hash: str | None = None
    issued_at: float | None = None
    smtp_code: int | None = None
    error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, raw: bytes | str) -> OTPRequest:
        return cls(**json.loads(raw))

    def dump(self) -> str:
        return json.dumps(asdict(self))

    def move(self, status: str, now: float, *, smtp_code: int | None = None,
             error: str | None = None) -> None:
        """Change status, stamping the change."""
        self.status = status
        self.updated_at = now
        self.smtp_code = smtp_code
        self.error = error
        self.history.append({"status": status, "at": now})
        if status in CLOSED:
            self.code_hash = None

    @property
    def attempts_left(self) -> int:
        return max(self.max_attempts - self.attempts, 0)

    def shown_status(self, now: float) -> str:
        """The status a reader sees: a code past its lifetime reads ``expired``."""
        if self.status in TYPEABLE and now >= self.expires_at:
            return CodeStatus.EXPIRED
        return self.status

    def public(self, now: float) -> dict[str, Any]:
        """What the API and the status page show: never the hash, never the address."""
        shown: dict[str, Any] = {"id": self.id, "status": self.shown_status(now),
                                 "attempts_left": self.attempts_left,
                                 "expires_at": self.expires_at, "updated_at": self.updated_at}
        if self.error:
            shown["error"] = self.error
        if self.smtp_code is not None:
            shown["smtp_code"] = self.smtp_code
        return shown


class OTPStore:
    """OTP requests by id, the current request per address, and each one's ledger."""

    def __init__(self, redis: Redis, policy: OTPPolicy, *,
                 now: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.policy = policy
        self.now = now
        self.guesses = GuessBudget(redis, policy.guesses_per_day)

    @classmethod
    def from_config(cls, redis: Redis, config: Mapping[str, Any]) -> OTPStore:
        """The store as the app configures it; ``OTP_CLOCK`` (a callable) replaces the clock."""
        return cls(redis, OTPPolicy.from_config(config), now=config.get("OTP_CLOCK") or time.time)

    @staticmethod
    def record_key(request_id: str) -> str:
        return key("otp", request_id)

    @staticmethod
    def address_key(email: str) -> str:
        """The pointer to the mailbox's current request (never reachable by a request id)."""
        return key("otp-mailbox", mailbox_digest(email))

    def ledger(self, request_id: str) -> DeliveryLedger:
        return DeliveryLedger(self.redis, f"otp:{request_id}")

    def get(self, request_id: str) -> OTPRequest | None:
        """The request, or ``None`` for an unknown id or one not of the form issued."""
        if not is_record_id(request_id):
            return None
        raw = self.redis.get(self.record_key(request_id))
        return None if raw is None else OTPRequest.load(raw)

    def create(self, email: str) -> OTPRequest:
        """A new request for *email*, queued; the address's previous request stops working."""
        now = self.now()
        request = OTPRequest(id=uuid.uuid4().hex, email=email, status=CodeStatus.QUEUED,
                             created_at=now, updated_at=now, expires_at=now + self.policy.ttl,
                             max_attempts=self.policy.max_attempts,
                             history=[{"status": CodeStatus.QUEUED, "at": now}])
        ledger = self.ledger(request.id)
        ledger.add([RecipientRecord(index=0, email=email)])
        ledger.expire(self.policy.record_ttl)
        Watchlist(self.redis).expect(Kind.OTP, request.id, now + WATCH_AFTER)
        pointer = self.address_key(email)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(pointer)
                    previous_id = pipe.get(pointer)
                    previous = None
                    if previous_id is not None:
                        previous_key = self.record_key(previous_id.decode())
                        pipe.watch(previous_key)
                        raw = pipe.get(previous_key)
                        previous = None if raw is None else OTPRequest.load(raw)
                    pipe.multi()
                    pipe.set(self.record_key(request.id), request.dump(),
                             ex=self.policy.record_ttl)
                    pipe.set(pointer, request.id, ex=self.policy.record_ttl)
                    if previous is not None and previous.status not in CLOSED:
                        previous.move(CodeStatus.EXPIRED, now, error="replaced by a newer request")
                        pipe.set(self.record_key(previous.id), previous.dump(), keepttl=True)
                    pipe.execute()
                    return request
                except WatchError:
                    continue

    def _change(self, request_id: str,
                change: Callable[[OTPRequest, float], bool]) -> OTPRequest | None:
        """Apply *change* atomically; it returns whether to write. ``None``: no such request."""
        if not is_record_id(request_id):
            return None
        record_key = self.record_key(request_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(record_key)
                    raw = pipe.get(record_key)
                    if raw is None:
                        return None
                    request = OTPRequest.load(raw)
                    if not change(request, self.now()):
                        pipe.unwatch()
                        return request
                    pipe.multi()
                    pipe.set(record_key, request.dump(), keepttl=True)
                    pipe.execute()
                    return request
                except WatchError:
                    continue

    def issue(self, request_id: str) -> str | None:
        """Draw a fresh code for the mail about to go out; keep only its HMAC.

        Returns ``None`` (and sends nothing) when the request is gone, closed, or
        was not delivered within ``OTP_TTL`` of its creation (it becomes ``expired``).
        """
        code = self.policy.new_code()
        digest = self.policy.digest(request_id, code)
        issued = False

        def start_sending(request: OTPRequest, now: float) -> bool:
            nonlocal issued
            if request.status not in SENDABLE:
                return False
            if now >= request.created_at + self.policy.ttl:
                request.move(CodeStatus.EXPIRED, now, error="not delivered in time")
                return True
            request.code_hash = digest
            request.issued_at = now
            request.expires_at = now + self.policy.ttl
            request.move(CodeStatus.SENDING, now)
            issued = True
            return True

        self._change(request_id, start_sending)
        return code if issued else None

    def record_delivery(self, request_id: str, status: str, smtp_code: int | None,
                        error: str | None) -> OTPRequest | None:
        """Mirror the delivery outcome; a request already closed keeps its status."""
        if status not in DELIVERY_STATUSES:
            raise ValueError(f"not a delivery status: {status!r}")

        def settle(request: OTPRequest, now: float) -> bool:
            if request.status not in SENDABLE:
                return False
            request.move(status, now, smtp_code=smtp_code, error=error)
            return True

        return self._change(request_id, settle)

    def verify(self, request_id: str, code: str) -> Verdict:
        """Consume the request if *code* is its code; count a wrong one.

        *code* must already be normalised (:func:`normalise_code`). Each code
        compared spends one guess of the mailbox's daily budget first (so
        concurrent guesses cannot overrun it); a right code, or one never
        compared, gives it back. With the budget spent the verdict is
        ``exhausted`` and the request is locked, whatever the code.
        """
        normalise_code(code, self.policy.length)
        found = self.get(request_id)
        if found is None:
            log.info("otp request %s: verification unknown", request_id[:40])
            return Verdict.UNKNOWN
        within_budget = self.guesses.spend(found.email)
        candidate = self.policy.digest(request_id, code)
        verdict: Verdict = Verdict.UNKNOWN

        def check(request: OTPRequest, now: float) -> bool:
            nonlocal verdict
            if request.status in CLOSED:
                verdict = Verdict.CLOSED
                return False
            if now >= request.expires_at:
                verdict = Verdict.EXPIRED
                request.move(CodeStatus.EXPIRED, now, smtp_code=request.smtp_code,
                             error=request.error)
                return True
            if not within_budget:
                verdict = Verdict.EXHAUSTED
                request.move(CodeStatus.LOCKED, now, error="too many wrong codes")
                return True
            stored = request.code_hash or ""
            if stored and hmac.compare_digest(candidate.encode(), stored.encode()):
                verdict = Verdict.VERIFIED
                request.move(CodeStatus.VERIFIED, now)
                return True
            request.attempts += 1
            if request.attempts >= request.max_attempts:
                verdict = Verdict.LOCKED
                request.move(CodeStatus.LOCKED, now, error="too many wrong codes")
            else:
                verdict = Verdict.WRONG
                request.updated_at = now
            return True

        self._change(request_id, check)
        if verdict not in {Verdict.WRONG, Verdict.LOCKED}:
            self.guesses.give_back(found.email)  # no wrong code was compared
        log.info("otp request %s: verification %s", request_id, verdict)
        return verdict
