"""The form of the ids Postroom hands out, checked before an id reaches a Redis key.

Messages, campaigns and OTP requests are named by ``uuid4().hex``: 32 lowercase
hexadecimal digits. Anything else a client sends (``address:<digest>``, an id
with ``:seen`` appended, a path, a very long string) names nothing, so it is
answered as an unknown id without a Redis round trip, and can never address
another kind of key.
"""

from __future__ import annotations

import re

_RECORD_ID = re.compile(r"[0-9a-f]{32}")


def is_record_id(value: object) -> bool:
    """Whether *value* has the form of an id Postroom issued."""
    return isinstance(value, str) and _RECORD_ID.fullmatch(value) is not None
