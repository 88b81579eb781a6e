"""The suppression list: addresses that unsubscribed, honoured by every later campaign.

It is a durable record (one Redis set, no TTL). Unsubscribe links carry a token
signed with ``SECRET_KEY`` (itsdangerous), so nobody can unsubscribe someone else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer
from redis import Redis

from tasks.stores import key

SALT = "postroom.unsubscribe"


def normalise(address: str) -> str:
    """The form addresses are compared in: trimmed and lower-cased."""
    return address.strip().lower()


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """What a valid unsubscribe token says."""

    email: str
    campaign_id: str


def unsubscribe_token(secret_key: str, email: str, campaign_id: str) -> str:
    """A URL-safe token naming *email* and the campaign it came from."""
    return UnsubscribeTokens(secret_key).token(email, campaign_id)


class UnsubscribeTokens:
    """Signs unsubscribe tokens with one key (built once, used for a whole batch)."""

    def __init__(self, secret_key: str) -> None:
        self.serializer = URLSafeSerializer(secret_key, salt=SALT)

    def token(self, email: str, campaign_id: str) -> str:
        return str(self.serializer.dumps([normalise(email), campaign_id]))


def read_unsubscribe_token(secret_key: str, token: str) -> Unsubscribe | None:
    """The token's contents, or ``None`` when it was not signed with *secret_key*."""
    try:
        email, campaign_id = URLSafeSerializer(secret_key, salt=SALT).loads(token)
    except (BadSignature, ValueError, TypeError):
        return None
    if not isinstance(email, str) or not isinstance(campaign_id, str):
        return None
    return Unsubscribe(email, campaign_id)


class SuppressionList:
    """Addresses that must not receive campaign mail."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.key = key("suppression")

    def add(self, email: str) -> bool:
        """Suppress *email*; ``True`` if it was not suppressed before."""
        return bool(self.redis.sadd(self.key, normalise(email)))

    def remove(self, email: str) -> bool:
        return bool(self.redis.srem(self.key, normalise(email)))

    def __contains__(self, email: str) -> bool:
        return bool(self.redis.sismember(self.key, normalise(email)))

    def which(self, emails: Sequence[str]) -> list[bool]:
        """For each address, whether it is suppressed (one round trip)."""
        if not emails:
            return []
        found = self.redis.smismember(self.key, [normalise(e) for e in emails])
        return [bool(flag) for flag in found]

    def __len__(self) -> int:
        return int(self.redis.scard(self.key))
