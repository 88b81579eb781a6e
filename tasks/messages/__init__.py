"""Single messages: accepted by ``POST /api/messages`` or SMTP submission, delivered by tasks.

What other behaviours may use is named here; the modules behind it are this package's own.
"""

from tasks.messages.store import MessageStore

__all__ = ["MessageStore"]
