"""Campaigns: created from a CSV or JSON list, controlled, sent batch by batch.

What other behaviours may use is named here; the modules behind it are this package's own.
"""

from tasks.campaigns.store import CampaignStore

__all__ = ["CampaignStore"]
