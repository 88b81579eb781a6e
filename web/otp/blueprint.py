"""The verification pages' blueprint."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("otp", __name__)
