"""Redis-backed state: messages, recipients' delivery status, attachments.

Every key starts with :data:`PREFIX`; every key that is not a durable record
has a TTL; multi-key changes are atomic (Lua or MULTI).
"""

PREFIX = "postroom:"


def key(*parts: object) -> str:
    """``postroom:<part>:<part>...``"""
    return PREFIX + ":".join(str(part) for part in parts)
