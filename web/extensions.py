"""Extensions created once at import time and attached in ``create_app``."""

from __future__ import annotations

from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_mail import Mail
from flask_wtf import CSRFProtect

mail = Mail()
csrf = CSRFProtect()
# Counters live in Redis (RATELIMIT_STORAGE_URI, set from REDIS_URL in create_app), so a
# limit holds across every web process. Routes opt in with @limiter.limit/shared_limit.
limiter = Limiter(key_func=get_remote_address, strategy="fixed-window",
                  storage_options={"key_prefix": "postroom:ratelimit"})
