"""Clients that load a running stack while a benchmark watches it.

- :func:`open_loop`: ``POST /api/messages`` at a fixed rate whatever the
  answers' pace (open loop): request *i* is due at ``start + i / rate`` and its
  latency runs from that moment, so a slow answer delays the clock of every
  request queued behind it instead of hiding it (no coordinated omission).
- :class:`OTPProbe`: ``POST /api/otp`` once per interval, each to a new
  address, remembering when each call began; the sink's log says when each
  code's mail was accepted.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from bench.stack import Stack


@dataclass
class OpenLoopResult:
    latencies: list[float]  # seconds from each request's due time to its full answer
    start_lags: list[float]  # seconds from due time to the moment the request was sent
    statuses: Counter[str]
    seconds: float  # first due time to last answer
    ids: list[str] = field(default_factory=list)  # each accepted message's id ("" if none)
    answered_at: list[float] = field(default_factory=list)  # time.time() each answer was read
    started: float = 0.0  # request i was due at started + i / rate (time.monotonic())
    rate: float = 0.0

    def answered_monotonic(self, i: int) -> float:
        """When request *i*'s answer had been read (``time.monotonic()``)."""
        return self.started + i / self.rate + self.latencies[i]


def open_loop(stack: Stack, rate: float, seconds: float, threads: int = 64,
              body: str = "One message while the relay is down.",
              prefix: str = "enqueue") -> OpenLoopResult:
    """``POST /api/messages`` *rate* times a second for *seconds*, each to a new address
    (``<prefix><i>@example.com``)."""
    total = int(rate * seconds)
    latencies = [0.0] * total
    lags = [0.0] * total
    statuses: list[str] = [""] * total
    ids = [""] * total
    answered_at = [0.0] * total
    lock = threading.Lock()
    following = iter(range(total))
    start = time.monotonic() + 0.2

    def client() -> None:
        while True:
            with lock:
                i = next(following, None)
            if i is None:
                return
            due = start + i / rate
            time.sleep(max(0.0, due - time.monotonic()))
            lags[i] = time.monotonic() - due
            try:
                answer = stack.post_json("/api/messages", {
                    "to": [f"{prefix}{i}@example.com"], "subject": f"Message {i}",
                    "body": body}, timeout=30)
                statuses[i] = str(answer.status)
                ids[i] = str(answer.body.get("id") or "")
            except OSError as err:
                statuses[i] = type(err).__name__
            latencies[i] = time.monotonic() - due
            answered_at[i] = time.time()

    workers = [threading.Thread(target=client, name=f"enqueue-{n}") for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return OpenLoopResult(latencies, lags, Counter(statuses), time.monotonic() - start, ids,
                          answered_at, start, rate)


@dataclass
class OTPRequest:
    email: str
    called_at: float  # time.monotonic() just before the API call
    status: int | str


@dataclass
class OTPProbe:
    """``POST /api/otp`` every *interval* s, to ``otp<k>@otp.example.net``, until stopped."""

    stack: Stack
    interval: float = 0.5
    limit: int = 2000
    requests: list[OTPRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otp-probe", daemon=True)

    def start(self) -> OTPProbe:
        self._thread.start()
        return self

    def stop(self, wait: bool = True) -> None:
        """No more requests; with *wait*, until the one in flight is answered."""
        self._stop.set()
        if wait and self._thread.is_alive():
            self._thread.join(35)

    def _run(self) -> None:
        due = time.monotonic()
        for k in range(self.limit):
            if self._stop.is_set():
                return
            email = f"otp{k}@otp.example.net"
            called_at = time.monotonic()
            try:
                status: int | str = self.stack.post_json("/api/otp", {"email": email},
                                                         timeout=30).status
            except OSError as err:
                status = type(err).__name__
            self.requests.append(OTPRequest(email, called_at, status))
            due += self.interval
            self._stop.wait(max(0.0, due - time.monotonic()))
