"""Campaign templates: Jinja in a bounded sandbox, compiled once, rendered per recipient.

Subjects and text bodies render without escaping; HTML bodies autoescape every
variable. Templates are checked when a campaign is created, so a template that
does not compile, reaches for private attributes (``{{ ''.__class__ }}``),
names a variable no recipient has, or builds too much or runs too long for the
first recipient (:mod:`tasks.delivery.engine.sandbox`) is refused then, not at send time.
At send time the same bounds fail only the recipient whose variables break them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, nodes

from tasks.delivery.engine.compose import HEADER_CONTROLS
from tasks.delivery.engine.errors import InvalidMessageError
from tasks.delivery.engine.sandbox import BoundedSandbox, render_bounded

# Variables every recipient has, whatever the recipient list holds.
BUILTIN_VARIABLES = frozenset({"email", "unsubscribe_url"})
MAX_TEMPLATE_CHARS = 200_000
MAX_RENDERED_CHARS = 2_000_000  # subject, text and HTML of one message together
RENDER_SECONDS = 1.0  # per recipient, at send time
CHECK_SECONDS = 0.25  # the sample render when a campaign is created
RENDER_ERRORS = (TemplateError, ArithmeticError, LookupError, TypeError, ValueError,
                 RecursionError)


class TemplateProblem(ValueError):
    """A template cannot be used; ``field`` names which one."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _environment(autoescape: bool) -> BoundedSandbox:
    return BoundedSandbox(autoescape=autoescape, undefined=StrictUndefined,
                          keep_trailing_newline=True)


_TEXT = _environment(autoescape=False)
_HTML = _environment(autoescape=True)


def _private_names(tree: nodes.Template) -> list[str]:
    """Attribute and item names that start with an underscore (sandbox escapes)."""
    found = [node.attr for node in tree.find_all(nodes.Getattr) if node.attr.startswith("_")]
    for item in tree.find_all(nodes.Getitem):
        if isinstance(item.arg, nodes.Const) and str(item.arg.value).startswith("_"):
            found.append(str(item.arg.value))
    for call in tree.find_all(nodes.Filter):
        if call.name == "attr":
            found += [str(arg.value) for arg in call.args
                      if isinstance(arg, nodes.Const) and str(arg.value).startswith("_")]
    return found


def _variables(tree: nodes.Template) -> set[str]:
    from jinja2 import meta

    return set(meta.find_undeclared_variables(tree))


@dataclass(frozen=True)
class _Compiled:
    field: str
    template: Any  # jinja2.Template
    variables: frozenset[str]

    def render(self, context: Mapping[str, Any], *, seconds: float = RENDER_SECONDS,
               max_chars: int = MAX_RENDERED_CHARS) -> str:
        try:
            return render_bounded(self.template, context, seconds=seconds, max_chars=max_chars)
        except RENDER_ERRORS as err:  # SecurityError, bounds, undefined variables, 1/0
            raise InvalidMessageError(f"{self.field} template: {err}") from err


class CampaignTemplates:
    """A campaign's subject, text body and HTML body, compiled in the sandbox."""

    def __init__(self, subject: str, body: str | None, html: str | None) -> None:
        if body is None and html is None:
            raise TemplateProblem("body", "give body, html or both")
        self.subject = _compiled("subject", subject, autoescape=False)
        self.body = None if body is None else _compiled("body", body, autoescape=False)
        self.html = None if html is None else _compiled("html", html, autoescape=True)

    @staticmethod
    def _compile(field: str, source: str, env: BoundedSandbox) -> _Compiled:
        if len(source) > MAX_TEMPLATE_CHARS:
            raise TemplateProblem(field, f"longer than {MAX_TEMPLATE_CHARS} characters")
        try:
            tree = env.parse(source)
            private = _private_names(tree)
            variables = frozenset(_variables(tree))
            template = env.from_string(env.rewrite(tree))
            # a plain dict, not the environment's ChainMap: every render copies the
            # globals into its context, and a dict copies in C
            template.globals = dict(template.globals)
        except TemplateError as err:
            line = getattr(err, "lineno", None)
            where = f" (line {line})" if line else ""
            raise TemplateProblem(field, f"does not compile{where}: {err}") from None
        except RecursionError:
            raise TemplateProblem(field, "is nested too deeply to compile") from None
        if private:
            raise TemplateProblem(field, f"refers to private attribute {private[0]!r}, "
                                         "which the sandbox forbids")
        return _Compiled(field, template, variables)

    @property
    def variables(self) -> frozenset[str]:
        """Recipient variables the templates use (beyond the built-in ones)."""
        used: set[str] = set(self.subject.variables)
        for part in (self.body, self.html):
            if part is not None:
                used |= part.variables
        return frozenset(used - BUILTIN_VARIABLES)

    def render(self, context: Mapping[str, Any], *, seconds: float = RENDER_SECONDS
               ) -> tuple[str, str | None, str | None]:
        """``(subject, text, html)`` for one recipient; :class:`InvalidMessageError` if not.

        The three together get *seconds* and :data:`MAX_RENDERED_CHARS`; control
        characters a recipient's variables put in the subject become spaces.
        """
        deadline = time.monotonic() + seconds
        rendered: list[str | None] = []
        room = MAX_RENDERED_CHARS
        for part in (self.subject, self.body, self.html):
            if part is None:
                rendered.append(None)
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise InvalidMessageError(f"{part.field} template: rendering took longer "
                                          f"than {seconds:g} s")
            text = part.render(context, seconds=left, max_chars=room)
            room -= len(text)
            rendered.append(text)
        subject, body, markup = rendered
        return header_text(subject or ""), body, markup

    def check(self, context: Mapping[str, Any]) -> None:
        """Render once for a sample recipient; raise :class:`TemplateProblem` if it fails.

        All three get :data:`CHECK_SECONDS` together: the web process is never pinned.
        """
        deadline = time.monotonic() + CHECK_SECONDS
        room = MAX_RENDERED_CHARS
        for part in (self.subject, self.body, self.html):
            if part is None:
                continue
            try:
                left = max(deadline - time.monotonic(), 0.001)
                room -= len(part.render(context, seconds=left, max_chars=room))
            except InvalidMessageError as err:
                raise TemplateProblem(part.field, str(err.__cause__ or err)) from None


@lru_cache(maxsize=16)
def _compiled(field: str, source: str, *, autoescape: bool) -> _Compiled:
    """A template compiled once per process: every batch of a campaign renders the same
    ones (a compiled Jinja template renders in any thread). A template that does not
    compile raises each time, as it is not kept."""
    return CampaignTemplates._compile(field, source, _HTML if autoescape else _TEXT)


def header_text(value: str) -> str:
    """*value* for a header: every control character (C0, C1, U+2028/2029) a space."""
    return HEADER_CONTROLS.sub(" ", value).strip()
