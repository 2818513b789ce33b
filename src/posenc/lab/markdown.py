"""Markdown for the lab's reports, and its HTML rendering with a real Markdown parser (markdown-it-py).

A report is written once, as Markdown (``report.md``), from the records; ``report.html`` is that Markdown rendered
by markdown-it-py (CommonMark with GitHub's tables), so the two always say the same thing and the HTML never shows
Markdown's markers. Text that comes from data (encoding labels with their JSON options, task names, error messages)
goes through :func:`escape` or :func:`code` before it joins the Markdown, so a ``|``, ``*`` or backtick in it is
shown as itself and never breaks a table or starts emphasis. Standard library only until :func:`render_html`.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence

__all__ = ["code", "escape", "render_html", "renderer", "table"]

# CommonMark's inline markers (and GitHub's ~~strike~~ and table pipes): backslash-escaped wherever they appear
_ALWAYS = re.compile(r"([\\`*\[\]<>|~&])")
# `_` starts emphasis only at a word's edge (snake_case names are safe as they are, and stay readable in report.md)
_EDGE_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
# what would start a block when it begins a line: a heading, list, quote or rule; a numbered list ("1." or "1)")
_LINE_START = re.compile(r"^(\s*)([#+\-=>])")
_NUMBERED = re.compile(r"^(\s*\d+)([.)])")


def escape(text: object, *, starts_line: bool = False) -> str:
    """``text`` as Markdown that renders as exactly that text, on one line (newlines become spaces).

    ``starts_line``: the text begins a line, where ``#``, ``-``, ``1.`` and the like would start a block; escaped
    then (in a table cell or after other text they are plain characters, and stay as they are).

    >>> escape('mrope {"sep": "a|b"} *x*')
    'mrope {"sep": "a\\\\|b"} \\\\*x\\\\*'
    """
    text = " ".join(str(text).split())
    text = _ALWAYS.sub(r"\\\1", text)
    text = _EDGE_UNDERSCORE.sub(r"\\_", text)
    if starts_line:
        # both patterns are anchored at the text's start (^ without re.M): one match at most, no count needed
        text = _LINE_START.sub(lambda m: m.group(1) + "\\" + m.group(2), text)
        text = _NUMBERED.sub(lambda m: m.group(1) + "\\" + m.group(2), text)
    return text


def code(text: object, *, cell: bool = False) -> str:
    """``text`` as an inline code span, fenced by more backticks than it holds; ``cell``: for a table cell.

    >>> code("rope")
    '`rope`'
    """
    text = " ".join(str(text).split())
    if not text:
        return ""  # nothing to show (two backticks alone would show as themselves)
    fence = "`" * (1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    if cell:  # tables split rows on `|` before reading code spans, so a pipe is escaped inside them too
        text = text.replace("|", "\\|")
    return f"{fence}{pad}{text}{pad}{fence}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, raw: bool = False) -> str:
    """A Markdown table; each cell escaped (:func:`escape`) unless ``raw`` (cells already Markdown).

    Raises:
        ValueError: a row with another number of cells than the header.
    """
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"table row {i} has {len(row)} cells, the header {len(header)}: {list(row)!r}")
    cell = (lambda c: " ".join(str(c).split())) if raw else escape
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(c) or " " for c in row) + " |" for row in rows])


_STYLE = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;line-height:1.4}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.2em .6em}"
          "code{background:#f3f3f3;padding:0 .2em}img{max-width:100%}")


def renderer():
    """The Markdown parser of the reports: markdown-it-py's CommonMark with GitHub's tables, raw HTML off (HTML in
    data is shown as text, never run).

    Raises:
        ImportError: markdown-it-py is not installed (it comes with ``posenc[lab]``).
    """
    try:
        from markdown_it import MarkdownIt
    except ImportError as exc:
        raise ImportError("report.html is rendered with markdown-it-py: pip install 'posenc[lab]' (or "
                          "'markdown-it-py>=3').") from exc
    return MarkdownIt("commonmark", {"html": False}).enable("table")


def render_html(markdown: str, *, title: str, images: Mapping[str, bytes]) -> str:
    """A self-contained HTML page of ``markdown``: every image embedded from ``images`` (its Markdown path -> PNG).

    Raises:
        ImportError: markdown-it-py is not installed (see :func:`renderer`).
        ValueError: the Markdown shows an image that ``images`` does not hold (the page would show a broken one).
    """
    parser = renderer()
    tokens = parser.parse(markdown)
    for token in tokens:
        for child in token.children or ():
            if child.type == "image":
                src = child.attrGet("src")
                if src not in images:
                    raise ValueError(f"the report shows the image {src!r}, which was not given to render_html; "
                                     f"known: {', '.join(images) or 'none'}.")
                child.attrSet("src", "data:image/png;base64," + base64.b64encode(images[src]).decode())
    body = parser.renderer.render(tokens, parser.options, {})  # pragma: no mutate - env: unread by these rules
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n{body}</body></html>\n")
