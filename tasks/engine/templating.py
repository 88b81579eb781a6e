"""Campaign templates: Jinja in its immutable sandbox, compiled once, rendered per recipient.

Subjects and text bodies render without escaping; HTML bodies autoescape every
variable. Templates are checked when a campaign is created, so a template that
does not compile, reaches for private attributes (``{{ ''.__class__ }}``) or
names a variable no recipient has is refused then, not at send time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tasks.engine.errors import InvalidMessageError

# Variables every recipient has, whatever the recipient list holds.
BUILTIN_VARIABLES = frozenset({"email", "unsubscribe_url"})
MAX_TEMPLATE_CHARS = 200_000
RENDER_ERRORS = (TemplateError, ArithmeticError, LookupError, TypeError, ValueError)


class TemplateProblem(ValueError):
    """A template cannot be used; ``field`` names which one."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(autoescape=autoescape, undefined=StrictUndefined,
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

    def render(self, context: Mapping[str, Any]) -> str:
        try:
            return str(self.template.render(context))
        except RENDER_ERRORS as err:  # SecurityError, undefined variables, 1/0, huge ranges
            raise InvalidMessageError(f"{self.field} template: {err}") from err


class CampaignTemplates:
    """A campaign's subject, text body and HTML body, compiled in the sandbox."""

    def __init__(self, subject: str, body: str | None, html: str | None) -> None:
        if body is None and html is None:
            raise TemplateProblem("body", "give body, html or both")
        self.subject = self._compile("subject", subject, _TEXT)
        self.body = None if body is None else self._compile("body", body, _TEXT)
        self.html = None if html is None else self._compile("html", html, _HTML)

    @staticmethod
    def _compile(field: str, source: str, env: ImmutableSandboxedEnvironment) -> _Compiled:
        if len(source) > MAX_TEMPLATE_CHARS:
            raise TemplateProblem(field, f"longer than {MAX_TEMPLATE_CHARS} characters")
        try:
            tree = env.parse(source)
            template = env.from_string(tree)
        except TemplateError as err:
            line = getattr(err, "lineno", None)
            where = f" (line {line})" if line else ""
            raise TemplateProblem(field, f"does not compile{where}: {err}") from None
        private = _private_names(tree)
        if private:
            raise TemplateProblem(field, f"refers to private attribute {private[0]!r}, "
                                         "which the sandbox forbids")
        return _Compiled(field, template, frozenset(_variables(tree)))

    @property
    def variables(self) -> frozenset[str]:
        """Recipient variables the templates use (beyond the built-in ones)."""
        used: set[str] = set(self.subject.variables)
        for part in (self.body, self.html):
            if part is not None:
                used |= part.variables
        return frozenset(used - BUILTIN_VARIABLES)

    def render(self, context: Mapping[str, Any]) -> tuple[str, str | None, str | None]:
        """``(subject, text, html)`` for one recipient; :class:`InvalidMessageError` if not."""
        subject = self.subject.render(context).replace("\r", " ").replace("\n", " ").strip()
        text = None if self.body is None else self.body.render(context)
        html = None if self.html is None else self.html.render(context)
        return subject, text, html

    def check(self, context: Mapping[str, Any]) -> None:
        """Render once for a sample recipient; raise :class:`TemplateProblem` if it fails."""
        for part in (self.subject, self.body, self.html):
            if part is None:
                continue
            try:
                part.render(context)
            except InvalidMessageError as err:
                raise TemplateProblem(part.field, str(err.__cause__ or err)) from None
