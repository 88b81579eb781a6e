"""One-time verification codes: requested, mailed, verified."""
