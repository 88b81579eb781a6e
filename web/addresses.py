"""The special-use names this deployment sends to (``ALLOW_SPECIAL_USE_DOMAINS``)."""

from __future__ import annotations

from tasks.shared.mailbox import special_use_allowed

__all__ = ["special_use_allowed"]
