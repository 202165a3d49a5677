"""Text from run folders in a report's files, written so that it stays text: each format's escaping
is here and nowhere else.

Settings, statuses, paths, commands and the names of metrics, groups and modules come from files
that run folders hold (overrides, ``metrics.json``, ``protocol.json``), which are data: an override
such as ``\\input{/etc/passwd}``, ``<script>`` or ``=HYPERLINK(...)`` reaches the reader as those
characters, never as LaTeX, HTML or a spreadsheet formula. Every writer of ``results.md``,
``results.tex`` and the CSV files puts such text through these functions; numbers it formats itself.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from typing import Any, Iterable

# markdown: HTML (< > &) as entities; what would end a table cell, open a code span or a link, or
# undo one of these escapes, behind a backslash
_MARKDOWN = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\\": "\\\\", "|": "\\|", "`": "\\`", "[": "\\[", "]": "\\]"}
# TeX: every character with a meaning of its own, as the character itself
_TEX = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#", "_": r"\_",
        "%": r"\%", "^": r"\textasciicircum{}", "~": r"\textasciitilde{}", "<": r"\textless{}",
        ">": r"\textgreater{}", "|": r"\textbar{}", "[": "{[}", "]": "{]}"}  # [ after \\ would be its option
# CSV: a text cell a spreadsheet would read as a formula (OWASP's list); a number is left as it is
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|nan)", re.IGNORECASE)


def one_line(value: Any) -> str:
    """``value`` as text on one line: every control character (line breaks, tabs, the escape that
    starts a terminal sequence) a space, so that nothing a run holds starts a line of its own."""
    return "".join(" " if unicodedata.category(c) == "Cc" else c for c in str(value))


def md(value: Any) -> str:
    """Run-folder text inside a markdown table cell or a line of prose."""
    return "".join(_MARKDOWN.get(c, c) for c in one_line(value))


def md_code(value: Any) -> str:
    """Run-folder text as a markdown code span (a command line): fenced by more backticks than it
    holds in a row, so that it cannot close the span; markdown shows a code span's text as is."""
    text = one_line(value)
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def tex(value: Any) -> str:
    """Run-folder text in LaTeX: every special character printed as itself, never a command."""
    return "".join(_TEX.get(c, c) for c in one_line(value))


def csv_cell(value: Any) -> Any:
    """A CSV cell: text that starts like a formula gets a leading ``'`` (spreadsheets then show it as
    text); numbers, and text that is a plain number such as ``-0.5``, stay as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_text(header: list[Any], rows: Iterable[Iterable[Any]]) -> str:
    """A whole CSV file, every cell (the header's too) through ``csv_cell``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in (header, *rows):
        writer.writerow([csv_cell(v) for v in row])
    return buffer.getvalue()
