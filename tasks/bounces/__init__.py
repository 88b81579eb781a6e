"""Bounces, complaints and the suppression list they feed.

What other behaviours may use is named here; the modules behind it are this package's own.
"""

from tasks.bounces.store import SuppressionList, UnsubscribeTokens, listed_error, normalise

__all__ = ["SuppressionList", "UnsubscribeTokens", "listed_error", "normalise"]
