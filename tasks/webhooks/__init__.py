"""Webhooks: the events a client app hears about, fanned out and POSTed to its endpoints.

What other behaviours may use is named here; the modules behind it are this package's own.
"""

from tasks.webhooks.store import Event

__all__ = ["Event"]
