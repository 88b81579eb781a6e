"""Extensions created once at import time and attached in ``create_app``."""

from __future__ import annotations

from flask_limiter import Limiter
from flask_mail import Mail
from flask_wtf import CSRFProtect

from tasks.delivery.throttle import RATE_LIMIT_PREFIX
from web.clients import client_network

mail = Mail()
csrf = CSRFProtect()
# Counters live in Redis (RATELIMIT_STORAGE_URI, set from REDIS_URL in create_app), so a
# limit holds across every web process; a client counts per IPv4 address or IPv6 /64.
# Routes opt in with @limiter.limit/shared_limit.
limiter = Limiter(key_func=client_network, strategy="fixed-window",
                  storage_options={"key_prefix": RATE_LIMIT_PREFIX})
