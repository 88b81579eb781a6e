"""Operator sign-in for the campaign pages: throttles and sessions revocable on the server.

Sign-in attempts are limited per client network and per user name
(``ADMIN_LOGIN_RATE_LIMIT``), so neither many guesses from one place nor a slow
spread of guesses at one account gets far. A signed-in operator holds a random
session id in the (signed, HttpOnly, SameSite=Lax) session cookie; the id is
only good while ``postroom:operator-session:<id>`` exists in Redis
(:class:`~tasks.shared.operator_sessions.OperatorSessions`), so signing out ends
the session for every copy of the cookie.
"""

from __future__ import annotations

import hashlib

from flask import current_app, request

from tasks.shared.operator_sessions import OperatorSessions
from web.clients import client_network
from web.extensions import limiter


def sessions() -> OperatorSessions:
    return OperatorSessions(current_app.extensions["redis"])


def user_name_key() -> str:
    name = request.form.get("username", "").strip().casefold()
    return "operator:" + hashlib.sha256(name.encode()).hexdigest()[:32]


per_ip = limiter.shared_limit(lambda: current_app.config["ADMIN_LOGIN_RATE_LIMIT"],
                              scope="operator-login-ip", key_func=client_network,
                              methods=["POST"])
per_user_name = limiter.shared_limit(lambda: current_app.config["ADMIN_LOGIN_RATE_LIMIT"],
                                     scope="operator-login-user", key_func=user_name_key,
                                     methods=["POST"])
