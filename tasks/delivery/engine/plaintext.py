"""A plain-text alternative derived from an HTML body.

An HTML-only message is better sent as ``multipart/alternative`` with a text
part that says the same thing than with no text part or an empty one (spam
filters score both). This keeps paragraphs, line breaks, list items and link
targets, and drops scripts, styles and markup.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_BLOCKS = frozenset({"p", "div", "section", "article", "header", "footer", "table", "tr",
                     "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "blockquote", "pre",
                     "hr", "address"})
_HIDDEN = frozenset({"script", "style", "head", "title", "template"})
_SPACES = re.compile(r"[ \t\r\f\v]+")
_BLANK_LINES = re.compile(r"\n{3,}")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.hidden = 0
        self.links: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HIDDEN:
            self.hidden += 1
        elif tag in _BLOCKS:
            self.chunks.append("\n\n")
        elif tag == "br":
            self.chunks.append("\n")
        elif tag == "li":
            self.chunks.append("\n- ")
        elif tag in {"td", "th"}:
            self.chunks.append(" ")
        elif tag == "a":
            self.links.append(dict(attrs).get("href"))

    def handle_endtag(self, tag: str) -> None:
        if tag in _HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in _BLOCKS:
            self.chunks.append("\n\n")
        elif tag == "a" and self.links:
            href = self.links.pop()
            if href and href.startswith(("http://", "https://", "mailto:")):
                self.chunks.append(f" ({href.removeprefix('mailto:')})")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.chunks.append(data.replace("\n", " "))


def text_from_html(html: str) -> str:
    """The readable text of *html*, one paragraph per block."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    text = "".join(parser.chunks)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip() + "\n"
