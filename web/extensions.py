"""Extensions created once at import time and attached in ``create_app``."""

from __future__ import annotations

from flask_mail import Mail
from flask_wtf import CSRFProtect

mail = Mail()
csrf = CSRFProtect()
