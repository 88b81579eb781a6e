"""Open SMTP sessions kept between single messages and codes of one worker process.

A message or a code is one task with one message; opening a session for each
(connect, greeting, EHLO, QUIT) costs more than the message. A
:class:`SessionPool` keeps the sessions such tasks leave open, so the next task
in the same process (any thread) carries its message on one of them:

- a session is taken by one connection at a time, and given back only between
  transactions (never with commands sent ahead) and while it may carry more:
  one that has carried ``MAIL_MAX_EMAILS`` messages is closed, never reused;
- before a kept session carries a message it is reset (``RSET``): a session the
  relay closed meanwhile fails there, before any message went out on it, and is
  thrown away for another or a fresh one;
- a session opened more than :data:`MAX_AGE` seconds ago is closed, not reused, so
  the relay state sees sessions opened (and a relay's load balancer spreads them);
- a session idle for *idle* seconds is closed (``QUIT``) by a background thread,
  and so is every kept session holding a ``MAIL_MAX_CONNECTIONS`` slot as soon
  as some process waits for one (:meth:`SlotWaiters.waiting`): a kept session
  holds its slot, and never keeps another sender waiting for it.
"""

from __future__ import annotations

import logging
import os
import smtplib
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Protocol

from tasks.delivery.engine.relays import Relay

log = logging.getLogger(__name__)

MAX_KEPT = 8  # idle sessions kept per kind of session (the lane's threads)
MAX_AGE = 60.0  # seconds from a session's opening after which it is not reused
WAITERS_POLL = 0.2  # seconds between looks for slot waiters while slotted sessions are kept


class SlotHolder(Protocol):
    """The part of :class:`tasks.delivery.engine.session.SessionGate` a kept session needs."""

    def release(self, handle: str) -> None: ...

    def trusted(self, handle: str) -> bool: ...


@dataclass(slots=True, eq=False)  # one session is itself, never equal to another
class KeptSession:
    """An open session between messages: the socket, where it goes, what it carried,
    and the ``MAIL_MAX_CONNECTIONS`` slot it holds (``gate`` and ``handle``)."""

    host: smtplib.SMTP
    relay: Relay
    carried: int
    gate: SlotHolder | None = None
    handle: str | None = None
    opened_at: float = field(default_factory=time.monotonic)
    idle_since: float = field(default_factory=time.monotonic)

    def close(self, *, polite: bool = True) -> None:
        """End the session (``QUIT`` when *polite*) and give its slot back."""
        try:
            if polite:
                self.host.quit()
            else:
                self.host.close()
        except (smtplib.SMTPException, OSError):
            self.host.close()
        finally:
            if self.gate is not None and self.handle is not None:
                self.gate.release(self.handle)
            self.handle = None

    def usable(self) -> bool:
        """Reset the session (``RSET``): ``False`` when the relay closed it or its slot
        may have run out (it is closed then, and carried nothing)."""
        if self.gate is not None and self.handle is not None \
                and not self.gate.trusted(self.handle):
            self.close(polite=False)
            return False
        try:
            code, _ = self.host.rset()
        except (smtplib.SMTPException, OSError) as err:
            log.info("kept SMTP session to %s is gone (%s); using another", self.relay, err)
            self.close(polite=False)
            return False
        if code != 250:
            log.info("kept SMTP session to %s answered RSET with %d; using another",
                     self.relay, code)
            self.close()
            return False
        return True


class SessionPool:
    """Sessions kept open between messages in this process, by kind of session (*key*:
    the relays, TLS, credentials and debugging they were opened with).

    *idle*: seconds a kept session may wait for its next message. *waiting*: tells
    whether some process waits for a ``MAIL_MAX_CONNECTIONS`` slot (then every kept
    session holding one is closed), or ``None``.
    """

    def __init__(self, idle: float, *, waiting: Callable[[], bool] | None = None,
                 max_kept: int = MAX_KEPT, max_age: float = MAX_AGE) -> None:
        if idle <= 0:
            raise ValueError(f"idle must be greater than 0, got {idle!r}")
        self.idle = idle
        self.waiting = waiting
        self.max_kept = max_kept
        self.max_age = max_age
        self._lock = threading.Condition()
        self._kept: dict[Hashable, list[KeptSession]] = {}
        self._pid = os.getpid()
        self._closer: threading.Thread | None = None

    def take(self, key: Hashable) -> KeptSession | None:
        """A kept session of kind *key*, reset and ready for a message, or ``None``."""
        while True:
            with self._lock:
                self._forget_after_fork()
                kept = self._kept.get(key)
                if not kept:
                    return None
                session = kept.pop()  # the most recently used: the least likely gone
            if time.monotonic() - session.opened_at > self.max_age:
                session.close()
            elif session.usable():
                return session

    def give(self, key: Hashable, session: KeptSession) -> None:
        """Keep *session* for the next message of kind *key*; close it instead when
        enough are kept, or when a slot it holds is wanted elsewhere."""
        if time.monotonic() - session.opened_at > self.max_age or (
                session.gate is not None and self.waiting is not None and self.waiting()):
            session.close()
            return
        session.idle_since = time.monotonic()
        with self._lock:
            self._forget_after_fork()
            kept = self._kept.setdefault(key, [])
            keep = len(kept) < self.max_kept
            if keep:
                kept.append(session)
                self._start_closer()
                self._lock.notify()
        if not keep:
            session.close()

    def kept(self) -> int:
        """Sessions kept open now."""
        with self._lock:
            return sum(len(kept) for kept in self._kept.values())

    def close_all(self) -> None:
        """Close every kept session (``QUIT``)."""
        with self._lock:
            sessions = [s for kept in self._kept.values() for s in kept]
            self._kept.clear()
        for session in sessions:
            session.close()

    # -- closing idle sessions

    def _start_closer(self) -> None:
        if self._closer is None:
            self._closer = threading.Thread(target=self._close_idle, daemon=True,
                                            name="postroom-smtp-idle")
            self._closer.start()

    def _close_idle(self) -> None:
        while True:
            with self._lock:
                if not any(self._kept.values()):
                    self._closer = None
                    return
                slotted = any(s.gate is not None for kept in self._kept.values() for s in kept)
            closing = self._due(slotted and self.waiting is not None and self.waiting())
            for session in closing:
                session.close()
            with self._lock:
                if not any(self._kept.values()):
                    continue
                now = time.monotonic()
                soonest = min(s.idle_since for kept in self._kept.values() for s in kept)
                wait = max(0.0, soonest + self.idle - now)
                if any(s.gate is not None for kept in self._kept.values() for s in kept) \
                        and self.waiting is not None:
                    wait = min(wait, WAITERS_POLL)
                if wait > 0:
                    self._lock.wait(wait)

    def _due(self, slots_wanted: bool) -> list[KeptSession]:
        """Take out the sessions to close now: idle too long, or holding a wanted slot."""
        now = time.monotonic()
        closing: list[KeptSession] = []
        with self._lock:
            for key, kept in list(self._kept.items()):
                stay = [s for s in kept if now - s.idle_since < self.idle
                        and not (slots_wanted and s.gate is not None)]
                closing.extend(s for s in kept if s not in stay)
                self._kept[key] = stay
        return closing

    def _forget_after_fork(self) -> None:
        """A forked child must not write on its parent's sockets: it starts empty."""
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._kept = {}
            self._closer = None
