"""Operator sign-in for the campaign pages: throttles and sessions revocable on the server.

Sign-in attempts are limited per client network and per user name
(``ADMIN_LOGIN_RATE_LIMIT``), so neither many guesses from one place nor a slow
spread of guesses at one account gets far. A signed-in operator holds a random
session id in the (signed, HttpOnly, SameSite=Lax) session cookie; the id is
only good while ``postroom:operator-session:<id>`` exists in Redis, so signing
out ends the session for every copy of the cookie.
"""

from __future__ import annotations

import hashlib
import secrets

from flask import current_app, request
from redis import Redis

from tasks.shared.identifiers import is_record_id
from tasks.shared.keys import key
from web.clients import client_network
from web.extensions import limiter

SESSION_TTL = 8 * 3600  # seconds a sign-in lasts


class OperatorSessions:
    """Signed-in operator sessions, by random id, each with a TTL."""

    def __init__(self, redis: Redis, *, ttl: int = SESSION_TTL) -> None:
        self.redis = redis
        self.ttl = ttl

    @staticmethod
    def _key(session_id: str) -> str:
        return key("operator-session", session_id)

    def open(self) -> str:
        session_id = secrets.token_hex(16)
        self.redis.set(self._key(session_id), "1", ex=self.ttl)
        return session_id

    def is_open(self, session_id: object) -> bool:
        return is_record_id(session_id) and bool(self.redis.exists(self._key(str(session_id))))

    def revoke(self, session_id: object) -> None:
        if is_record_id(session_id):
            self.redis.delete(self._key(str(session_id)))


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
