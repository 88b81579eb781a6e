"""Signed-in operator sessions: ``postroom:operator-session:<id>``, each with a TTL.

The operator pages' sign-in (:mod:`web.campaigns.signin`) opens one and keeps its
random id in the session cookie; the id is good only while its key exists, so
revoking it ends the session for every copy of the cookie.
"""

from __future__ import annotations

import secrets

from redis import Redis

from tasks.shared.identifiers import is_record_id
from tasks.shared.keys import key

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
