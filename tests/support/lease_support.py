"""Claim leases held by hand: what a run in another process looks like to the ledger."""

from __future__ import annotations

import redis

from tasks.delivery.ledger import LEASE_PREFIX


def lease(client: redis.Redis, token: str = "t", ttl: float = 30.0) -> str:
    """Take *token*'s lease for a run that keeps it (never renewed: *ttl* long); its run id."""
    run = f"test-host:{token}:run"
    client.set(LEASE_PREFIX + token, run, px=int(ttl * 1000))
    return run
