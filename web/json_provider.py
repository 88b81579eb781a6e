"""JSON for the app: request bodies nested deeper than :data:`MAX_DEPTH` are not JSON we read.

Python's parser answers ``[`` repeated thousands of times with a
:class:`RecursionError`, which Flask does not expect (it catches
:class:`ValueError`): a 500. Here such a body, and any nested more than
:data:`MAX_DEPTH` levels, is a :class:`ValueError`, so the API answers 400 and
the forms treat it as no body at all.

A body is read as UTF-8, strictly (RFC 8259 section 8.1): Python's own parser
would guess UTF-16 or UTF-32 and let UTF-8-encoded surrogates through. A string
or name that holds a lone surrogate (``"\\ud800"``) is not text any mail can
carry; both are a :class:`ValueError` too.
"""

from __future__ import annotations

import re
from typing import Any

from flask.json.provider import DefaultJSONProvider

MAX_DEPTH = 32  # no Postroom request needs more than a handful of levels
SURROGATE = re.compile("[\ud800-\udfff]")  # a pair decodes to one character: these are lone


class BoundedJSONProvider(DefaultJSONProvider):
    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        if isinstance(s, bytes | bytearray):
            try:
                s = bytes(s).decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"the body is not valid UTF-8 (at byte {err.start})") from None
        try:
            value = super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError(f"JSON nested more than {MAX_DEPTH} levels deep") from None
        if nesting(value) > MAX_DEPTH:
            raise ValueError(f"JSON nested more than {MAX_DEPTH} levels deep")
        if has_lone_surrogate(value):
            raise ValueError("a string holds a lone surrogate (\\ud800 to \\udfff unpaired), "
                             "which is not text")
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


def has_lone_surrogate(value: Any) -> bool:
    """Whether any string or object key in *value* holds an unpaired surrogate."""
    pending: list[Any] = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False
