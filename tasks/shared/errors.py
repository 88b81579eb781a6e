"""What a service refuses, in the domain's words: no HTTP status, no Flask.

Each error carries a short ``code`` (``not_found``, ``invalid_template``, ...), a
sentence for a person, and, for :class:`Invalid` and :class:`TooLarge`, the
``fields`` it is about (field name to reason). The web layer maps the kind to a
response: JSON for ``/api`` (:mod:`web.api.errors`), a flash or a form for the
operator pages.
"""

from __future__ import annotations

from collections.abc import Mapping


class DomainError(Exception):
    """A request the domain refuses; the caller can act on :attr:`message`."""

    default_code = "error"

    def __init__(self, message: str, *, code: str | None = None,
                 fields: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.fields: dict[str, str] | None = dict(fields) if fields else None


class NotFound(DomainError):
    """No such record (campaign, message, code request)."""

    default_code = "not_found"


class Conflict(DomainError):
    """The record's state forbids it now (a campaign's status, a reused key)."""

    default_code = "conflict"


class Invalid(DomainError):
    """What was given cannot be used; :attr:`fields` names each field and why."""

    default_code = "invalid"

    @classmethod
    def of(cls, field: str, reason: str, message: str, *, code: str | None = None) -> Invalid:
        """One field refused: ``Invalid.of("sender", "missing", "the message has no sender")``."""
        return cls(message, code=code, fields={field: reason})


class TooLarge(DomainError):
    """More bytes than a setting allows (an attachment over ``MAX_ATTACHMENT_BYTES``)."""

    default_code = "too_large"
