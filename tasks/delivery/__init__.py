"""Delivery: the engine, the ledger, claim leases, relays and the reconciler."""
