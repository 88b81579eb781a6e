"""JSON for the app: request bodies nested deeper than :data:`MAX_DEPTH` are not JSON we read.

Python's parser answers ``[`` repeated thousands of times with a
:class:`RecursionError`, which Flask does not expect (it catches
:class:`ValueError`): a 500. Here such a body, and any nested more than
:data:`MAX_DEPTH` levels, is a :class:`ValueError`, so the API answers 400 and
the forms treat it as no body at all.
"""

from __future__ import annotations

from typing import Any

from flask.json.provider import DefaultJSONProvider

MAX_DEPTH = 32  # no Postroom request needs more than a handful of levels


class BoundedJSONProvider(DefaultJSONProvider):
    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        try:
            value = super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError(f"JSON nested more than {MAX_DEPTH} levels deep") from None
        if nesting(value) > MAX_DEPTH:
            raise ValueError(f"JSON nested more than {MAX_DEPTH} levels deep")
        return value


def nesting(value: Any) -> int:
    """How many arrays and objects deep *value* goes (without recursion)."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            depth += 1
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH:
                break
            pending.extend((child, depth) for child in item)
    return deepest
