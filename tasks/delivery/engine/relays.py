"""SMTP relays: ``MAIL_SERVER`` and ``MAIL_FALLBACK_SERVERS``, and what is known of them.

A session that cannot be opened on one relay moves to the next (DESIGN promise
11). Which relays failed recently is shared by every worker through a
:class:`RelayState` the caller passes in (a Redis-backed one lives in
``tasks.delivery.relay_state``), so the engine itself keeps no state between batches.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from tasks.delivery.engine.errors import SessionError


@dataclass(frozen=True, slots=True)
class Relay:
    """One SMTP relay: ``MAIL_SERVER:MAIL_PORT`` or an entry of ``MAIL_FALLBACK_SERVERS``."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Relay:
        """``host:port`` (``[v6 address]:port`` for IPv6); :class:`ValueError` if malformed."""
        host, colon, port = text.strip().rpartition(":")
        bracketed = host.startswith("[") and host.endswith("]")
        if bracketed:
            host = host[1:-1]
        elif ":" in host:
            raise ValueError(f"write an IPv6 relay as [address]:port, got {text!r}")
        if not colon or not host or any(c.isspace() or c in "[]/@" for c in host):
            raise ValueError(f"expected host:port, got {text!r}")
        if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"expected a port from 1 to 65535 in {text!r}")
        return cls(host, int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class RelayState(Protocol):
    """What every worker knows about each relay's last session (``MAIL_RELAY_COOLDOWN``)."""

    def cooling_down(self, relays: Collection[str], *, take_turn: bool = True) -> set[str]:
        """Those of *relays* that failed recently and are skipped for now; a relay due for
        its one probe is not, and the caller takes that turn unless *take_turn* is false."""

    def opened(self, relay: str) -> None:
        """A session was opened on *relay*."""

    def failed(self, relay: str, reason: str) -> None:
        """A session could not be opened on *relay*; skip it for the cooldown."""

    def auth_refused(self, relay: str, reason: str) -> None:
        """*relay* refused the credentials: open its breaker (skipped by every worker
        for the cooldown, even with no other relay; then one session probes it)."""


class Pacer(Protocol):
    """Each relay's send rate, shared by every worker (``tasks.delivery.pacing``)."""

    def reserve(self, relay: str) -> float:
        """Take the next ``MAIL FROM`` slot on *relay*; the seconds until it comes."""

    def reserve_now(self, relay: str) -> bool:
        """Take a slot only if it is free now."""

    def succeeded(self, relay: str, transactions: int = 1) -> None:
        """*relay* accepted *transactions*."""

    def throttled(self, relay: str) -> None:
        """*relay* asked for mail more slowly."""


def session_failure(relay: Relay, err: BaseException) -> SessionError:
    """Why a session could not be opened on *relay*, with the server's code if it gave one."""
    if isinstance(err, ssl.SSLError):
        detail = getattr(err, "verify_message", None)  # why the certificate was refused
        reason = f"{err.reason}: {detail}" if detail else (err.reason or str(err))
        return SessionError(f"TLS with {relay} failed: {reason}")
    if isinstance(err, smtplib.SMTPAuthenticationError):
        return SessionError(f"authentication refused by {relay}: {err.smtp_code} "
                            f"{_text(err.smtp_error)}", err.smtp_code)
    if isinstance(err, smtplib.SMTPNotSupportedError):
        return SessionError(f"{relay}: {err}")
    if isinstance(err, smtplib.SMTPResponseException):
        return SessionError(f"{relay} refused the session: {_text(err.smtp_error)}",
                            err.smtp_code)
    return SessionError(f"connection to {relay} failed: {err!r}")


def no_relay(failures: list[SessionError], cooling: list[Relay]) -> SessionError:
    """One error for a session no relay would open."""
    reasons = [str(failure) for failure in failures]
    if cooling:
        reasons.append("cooling down after a failed session: "
                       + ", ".join(str(relay) for relay in cooling))
    code = next((f.smtp_code for f in reversed(failures) if f.smtp_code is not None), None)
    return SessionError("; ".join(reasons), code)


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
