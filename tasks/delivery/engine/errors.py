"""Delivery errors, typed by what happens next."""

from __future__ import annotations


class DeliveryError(Exception):
    """A message could not be delivered to one or more recipients."""

    def __init__(self, message: str, smtp_code: int | None = None) -> None:
        super().__init__(message)
        self.smtp_code = smtp_code


class TemporaryDeliveryError(DeliveryError):
    """Try again later: a 4xx reply, a timeout or a dropped connection."""


class PermanentDeliveryError(DeliveryError):
    """Do not try again: a 5xx reply or a message that cannot be built."""


class InvalidMessageError(PermanentDeliveryError):
    """The message itself is malformed (bad header, no recipients, no sender)."""


class SessionError(TemporaryDeliveryError):
    """No SMTP session could be opened: refused, silent, TLS or AUTH failure.

    The recipients are not at fault, so they are deferred and tried again.
    """
