"""The JSON API under ``/api``: bearer-token auth, JSON errors, OpenAPI document.

The blueprint and its checks live in :mod:`web.api.blueprint`; importing this package
adds every route module's routes to it.
"""

from __future__ import annotations

from web.api import (  # noqa: F401  (routes)
    bounces,
    campaigns,
    explorer,
    messages,
    openapi,
    otp,
    suppressions,
    webhooks,
)
from web.api.blueprint import bp as bp
