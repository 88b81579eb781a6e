"""The operator's campaign pages (``/campaigns``): sign in, upload, watch, control.

The blueprint is :mod:`web.campaigns.blueprint`; importing this package registers
every module of routes on it. What the pages do to a campaign is
:mod:`tasks.campaigns`' (creation, recipients, control, drafts).
"""

from web.campaigns import (  # noqa: F401  (their routes on the blueprint)
    draft_pages,
    pages,
    recipient_pages,
    suppressions,
)
from web.campaigns.blueprint import bp

__all__ = ["bp"]
