"""What follows each message's fate beyond the ledger: a log line per recipient, the
deployment-wide counters behind ``/metrics``, and whatever else the task watches.

A :class:`DeliveryObservers` is the ``BatchOptions(observe=...)`` of one task run
(built by :func:`tasks.delivery.runtime.observer`). The log line names the recipient's
domain, never the address, and no error text (a relay's reply may quote the
address); the counters are added up in memory and written to Redis about once a
second and when the run ends (:meth:`DeliveryObservers.close`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from redis.exceptions import RedisError

from tasks.delivery.counters import DeliveryMetrics, MetricsTally
from tasks.delivery.service import MessageFate
from tasks.vocabulary import Status

log = logging.getLogger(__name__)

FLUSH_EVERY = 1.0  # seconds between writes of the counters during a batch

Observer = Callable[[MessageFate], None]
# a message's fate once the ledger recorded it, with the status it set per recipient
Recorder = Callable[[MessageFate, list[str]], None]


@runtime_checkable
class Buffered(Protocol):
    """An observer that keeps what it saw and writes it when :meth:`close` is called."""

    def close(self) -> None: ...


def domain_of(address: str) -> str:
    """``example.com`` for ``Ada@Example.com``: all a log line may say of a recipient."""
    return address.rpartition("@")[2].lower() or "-"


def log_outcomes(kind: str, delivery_id: str, fate: MessageFate,
                 level: int = logging.INFO) -> None:
    """One line per recipient: delivery, Message-ID, status, domain, SMTP code, duration
    (at *level*: ``DELIVERY_LOG_LEVEL``)."""
    if not log.isEnabledFor(level):
        return
    message_id = fate.message.message_id if fate.message is not None else "-"
    for record, outcome in zip(fate.recipients, fate.outcomes, strict=True):
        domain = domain_of(record.email)
        # the record is made here and handed to the handlers as Logger.log would, less
        # its search of the call stack for the caller (no format Postroom uses shows it)
        line = log.makeRecord(
            log.name, level, __file__, _LINE, "%s %s %s: %s to %s, smtp %s, %.3f s",
            (kind, delivery_id, message_id, outcome.status, domain, outcome.smtp_code or "-",
             fate.seconds), None, "log_outcomes",
            {"delivery": {"kind": kind, "id": delivery_id, "message_id": message_id,
                          "status": outcome.status, "domain": domain,
                          "smtp_code": outcome.smtp_code,
                          "seconds": round(fate.seconds, 6)}})
        log.handle(line)


_LINE = log_outcomes.__code__.co_firstlineno  # where the record says it was logged


class DeliveryObservers:
    """Logs and counts each message's fate, then hands it to *observers* in order; once the
    ledger has recorded it, hands it with the statuses set to *recorders*
    (:meth:`recorded`, the batch's ``BatchOptions(recorded=...)``)."""

    def __init__(self, kind: str, delivery_id: str, metrics: DeliveryMetrics,
                 observers: Sequence[Observer] = (), *, recorders: Sequence[Recorder] = (),
                 log_level: int = logging.INFO) -> None:
        self.kind = kind
        self.log_level = log_level
        self.delivery_id = delivery_id
        self.metrics = metrics
        self.observers = list(observers)
        self.recorders = list(recorders)
        self.tally = MetricsTally()
        self.written = time.monotonic()

    def __call__(self, fate: MessageFate) -> None:
        log_outcomes(self.kind, self.delivery_id, fate, self.log_level)
        for outcome in fate.outcomes:
            self.tally.outcome(self.kind, outcome.status, outcome.smtp_code)
        if fate.message is not None and any(
                outcome.status != Status.SUPPRESSED for outcome in fate.outcomes):
            self.tally.sent_in(self.kind, fate.seconds)  # it went to the relay
        if time.monotonic() - self.written >= FLUSH_EVERY:
            self.flush()
        for observer in self.observers:
            observer(fate)

    def recorded(self, fate: MessageFate, statuses: list[str]) -> None:
        for record in self.recorders:
            record(fate, statuses)

    def flush(self) -> None:
        """Write what was counted so far (a Redis outage loses only these figures)."""
        tally, self.tally, self.written = self.tally, MetricsTally(), time.monotonic()
        try:
            self.metrics.write(tally)
        except RedisError as err:
            log.warning("delivery counters of %s %s not written: %s", self.kind,
                        self.delivery_id, err)

    def close(self, *, sessions_opened: int = 0) -> None:
        """The run is over: count its SMTP sessions and write everything left, the
        observers' own buffers included."""
        self.tally.sessions += sessions_opened
        self.flush()
        for observer in [*self.observers, *self.recorders]:
            if isinstance(observer, Buffered):
                observer.close()
