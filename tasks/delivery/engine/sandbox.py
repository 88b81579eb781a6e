"""Jinja's immutable sandbox with bounds on what a template may build and how long it runs.

The stock sandbox stops templates reaching Python internals but not from
building huge values: ``{{ 9 ** (9 ** 9) }}`` (which Jinja would even fold at
compile time), ``{{ 'a' * 200000000 }}``, ``{{ 'x'|center(10**9) }}``, a macro
that doubles its argument forty times, loops over loops. :class:`BoundedSandbox`
adds, with the sandbox's own hooks:

- no constant folding (``optimized=False``), so compiling never evaluates;
- ``**``, ``*``, ``+``, ``%`` and ``//`` intercepted (``intercepted_binops`` and
  :meth:`call_binop`): the size of the result is estimated before it is built;
- every call (:meth:`call`), every filter and ``~`` (rewritten into a call)
  checked the same way: widths and counts at most :data:`MAX_COUNT`, strings and
  lists at most :data:`MAX_VALUE_CHARS`;
- ``range`` at most :data:`MAX_COUNT` items, and no ``lipsum`` generator.

:func:`render_bounded` then bounds time and output: a deadline checked at every
step of every ``{% for %}`` loop (each loop's iterable is rewritten into a
checked iterator), every call, operator, filter and ``~``. Anything over a
bound raises :class:`RenderLimitExceeded`, a :class:`jinja2.exceptions.SecurityError`.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from jinja2 import nodes, pass_eval_context
from jinja2.exceptions import SecurityError
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

MAX_VALUE_CHARS = 1_000_000  # any one string or list a template builds
MAX_COUNT = 10_000  # widths, repeats, range() items, batch sizes
MAX_INT_BITS = 4096  # integers (about 1,200 digits)
CONCAT = "postroom_concat"  # the global that ``a ~ b`` becomes
LOOP = "postroom_loop"  # the global every ``{% for %}`` iterates through

_SIZED = (str, bytes, list, tuple, dict, set, frozenset)
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_COUNT_FILTERS = frozenset({"center", "indent", "wordwrap", "truncate", "batch", "slice"})
_WIDE_PRINTF = re.compile(r"%[^a-zA-Z%]*(?:\*|\d{5,})")
_WIDE_FORMAT = re.compile(r"\{[^{}]*:[^{}]*(?:\{|\d{5,})")


class RenderLimitExceeded(SecurityError):
    """A template tried to build too much, or ran too long."""


# (monotonic deadline, seconds allowed) of the render running in this context
_DEADLINE: ContextVar[tuple[float, float]] = ContextVar("postroom_render_deadline",
                                                       default=(math.inf, math.inf))


def _tick() -> None:
    deadline, seconds = _DEADLINE.get()
    if time.monotonic() > deadline:
        raise _refuse(f"rendering took longer than {seconds:.2g} s")


def _refuse(reason: str) -> RenderLimitExceeded:
    return RenderLimitExceeded(reason)


def _size(value: Any) -> int:
    return len(value) if isinstance(value, _SIZED) else 0


def checked(value: Any) -> Any:
    """*value*, unless it is larger than a template may build."""
    _tick()
    if isinstance(value, _SIZED) and len(value) > MAX_VALUE_CHARS:
        raise _refuse(f"a value of more than {MAX_VALUE_CHARS:,} items or characters")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise _refuse(f"a number of more than {MAX_INT_BITS} bits")
    return value


def _count(value: Any) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_COUNT:
        raise _refuse(f"a width or count above {MAX_COUNT:,}")


def _check_format(fmt: str, values: tuple[Any, ...], style: str) -> None:
    """``fmt % values`` or ``fmt.format(*values)``: no huge widths, a bounded result."""
    wide = _WIDE_PRINTF if style == "%" else _WIDE_FORMAT
    if wide.search(fmt):
        raise _refuse("a format width or precision from an argument or above 9,999")
    fields = fmt.count("%" if style == "%" else "{")
    largest = max((len(str(v)) if isinstance(v, str | int | float) else _size(v)
                   for v in values), default=0)
    if len(fmt) + fields * largest > MAX_VALUE_CHARS:
        raise _refuse(f"a formatted string of more than {MAX_VALUE_CHARS:,} characters")


def _format_values(value: Any) -> tuple[Any, ...]:
    if isinstance(value, tuple):
        return value
    if isinstance(value, Mapping):
        return tuple(value.values())
    return (value,)


def _check_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "**" and isinstance(left, int) and isinstance(right, int):
        if abs(left) > 1 and right > 0 and right * left.bit_length() > MAX_INT_BITS:
            raise _refuse(f"a power of more than {MAX_INT_BITS} bits")
    elif operator == "*":
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise _refuse(f"a product of more than {MAX_INT_BITS} bits")
        elif isinstance(right, int) and _size(left) * right > MAX_VALUE_CHARS:
            raise _refuse(f"a repetition of more than {MAX_VALUE_CHARS:,} items or characters")
        elif isinstance(left, int) and _size(right) * left > MAX_VALUE_CHARS:
            raise _refuse(f"a repetition of more than {MAX_VALUE_CHARS:,} items or characters")
    elif operator == "+" and _size(left) + _size(right) > MAX_VALUE_CHARS:
        raise _refuse(f"a value of more than {MAX_VALUE_CHARS:,} items or characters")
    elif operator == "%" and isinstance(left, str):
        _check_format(left, _format_values(right), "%")


def _check_method(method: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Bound methods of strings that size their result from an argument."""
    owner = getattr(method, "__self__", None)
    if not isinstance(owner, str):
        return
    name = getattr(method, "__name__", "")
    if name in _WIDTH_METHODS:
        for value in (*args, *kwargs.values()):
            _count(value)
    elif name == "replace" and len(args) >= 2:
        _check_replace(owner, args[0], args[1])
    elif name == "join" and args:
        _check_join(owner, args[0])
    elif name in {"format", "format_map"}:
        _check_format(owner, (*args, *kwargs.values(), *(v for a in args if isinstance(
            a, Mapping) for v in a.values())), "{")


def _check_replace(text: Any, old: Any, new: Any) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        hits = text.count(old) if old else len(text) + 1
        if len(text) + hits * len(new) > MAX_VALUE_CHARS:
            raise _refuse(f"a replacement of more than {MAX_VALUE_CHARS:,} characters")


def _check_join(separator: Any, items: Any) -> None:
    if isinstance(items, list | tuple):
        total = sum(len(str(i)) if isinstance(i, str | int | float) else 0 for i in items)
        if total + len(items) * len(str(separator)) > MAX_VALUE_CHARS:
            raise _refuse(f"a joined string of more than {MAX_VALUE_CHARS:,} characters")


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)  # keeps Jinja's pass_context/pass_eval_context marks
    def bounded(*args: Any, **kwargs: Any) -> Any:
        values = [a for a in args if not isinstance(a, Context | EvalContext)]
        if name in _COUNT_FILTERS:
            for value in (*values[1:], *kwargs.values()):
                _count(value)
        elif name == "replace" and len(values) >= 3:
            _check_replace(values[0], values[1], values[2])
        elif name == "join" and values:
            _check_join(values[1] if len(values) > 1 else "", list(values[0])
                        if isinstance(values[0], list | tuple) else [])
        elif name == "format" and values and isinstance(values[0], str):
            _check_format(values[0], (*values[1:], *kwargs.values()), "%")
        for value in (*values, *kwargs.values()):
            checked(value)
        return checked(func(*args, **kwargs))

    return bounded


def _bounded_range(*bounds: int) -> range:
    numbers = range(*bounds)
    if len(numbers) > MAX_COUNT:
        raise _refuse(f"a range of more than {MAX_COUNT:,} numbers")
    return numbers


def _loop(iterable: Iterable[Any]) -> Iterator[Any]:
    """What ``{% for %}`` iterates: the same items, with the deadline checked at each."""
    for item in iterable:
        _tick()
        yield item


@pass_eval_context
def _concat(eval_ctx: EvalContext, *parts: Any) -> str:
    """``a ~ b``: as Jinja joins them (escaping under autoescape), within the bounds."""
    if sum(len(str(p)) if isinstance(p, str | int | float) else 0
           for p in parts) > MAX_VALUE_CHARS:
        raise _refuse(f"a joined string of more than {MAX_VALUE_CHARS:,} characters")
    joined: str = markup_join(parts) if eval_ctx.autoescape else str_join(parts)
    checked(joined)
    return joined


class _Checkpoints(NodeTransformer):
    """``a ~ b ~ c`` -> ``postroom_concat(a, b, c)``; ``for x in xs`` -> ``for x in
    postroom_loop(xs)``: calls the sandbox checks, and loops that watch the deadline."""

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        parts = [self.visit(part) for part in node.nodes]
        return _call(CONCAT, parts, node.lineno)

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _call(LOOP, [node.iter], node.lineno)
        return node


def _call(name: str, args: list[Any], lineno: int) -> nodes.Call:
    return nodes.Call(nodes.Name(name, "load", lineno=lineno), args, [], None, None,
                      lineno=lineno)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, never folding constants, bounding every value it builds."""

    intercepted_binops = frozenset({"**", "*", "+", "%", "//"})

    def __init__(self, **options: Any) -> None:
        super().__init__(optimized=False, **options)
        self.filters = {name: _bounded_filter(name, func) for name, func in self.filters.items()}
        self.globals.pop("lipsum", None)
        self.globals["range"] = _bounded_range
        self.globals[CONCAT] = _concat
        self.globals[LOOP] = _loop

    def rewrite(self, tree: nodes.Template) -> nodes.Template:
        """*tree* with every ``~`` and loop turned into checked calls (before compiling it)."""
        rewritten: nodes.Template = _Checkpoints().visit(tree)
        return rewritten

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return checked(super().call_binop(context, operator, left, right))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``'{:>9}'.format(x)`` and ``format_map``, as the sandbox runs them, bounded."""
        run = super().wrap_str_format(value)
        if run is None:
            return None
        fmt = str(value.__self__)

        def bounded(*args: Any, **kwargs: Any) -> str:
            mapped = (v for a in args if isinstance(a, Mapping) for v in a.values())
            _check_format(fmt, (*args, *kwargs.values(), *mapped), "{")
            return str(checked(run(*args, **kwargs)))

        return bounded

    def call(__self, __context: Context, __obj: Any, *args: Any,
             **kwargs: Any) -> Any:
        for value in (*args, *kwargs.values()):
            checked(value)
        _check_method(__obj, args, kwargs)
        return checked(super().call(__context, __obj, *args, **kwargs))


def render_bounded(template: Any, context: Mapping[str, Any], *, seconds: float,
                   max_chars: int) -> str:
    """Render *template* within *seconds* and *max_chars*, or raise :class:`RenderLimitExceeded`.

    *template* must come from a tree passed through :meth:`BoundedSandbox.rewrite`.
    """
    token = _DEADLINE.set((time.monotonic() + seconds, seconds))
    try:
        chunks: list[str] = []
        size = 0
        for chunk in template.generate(context):
            size += len(chunk)
            if size > max_chars:
                raise _refuse(f"the rendered text is longer than {max_chars:,} characters")
            chunks.append(chunk)
        return "".join(chunks)
    finally:
        _DEADLINE.reset(token)
