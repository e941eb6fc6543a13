"""The README as data for tests: its sections and tables, parsed by markdown-it-py (CommonMark + tables)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# A status code as the README writes it: in a code span of its own (`404`) or opening one (`200 {...}`).
STATUS_CODE = re.compile(r"`([1-5]\d\d)(?:\s[^`]*)?`")


@dataclass(frozen=True)
class Table:
    """A table: its header cells and its rows, each cell as the Markdown source of its text."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    line: int


@cache
def _tokens() -> list[object]:
    return list(MarkdownIt("commonmark").enable("table").parse(README.read_text(encoding="utf-8")))


def section(title: str) -> str:
    """The Markdown source of the section with this heading, its subsections included."""
    lines = README.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^(#+) (.*)$", line)
        if match and match.group(2).strip() == title:
            level = len(match.group(1))
            end = next(
                (
                    j
                    for j in range(i + 1, len(lines))
                    if (m := re.match(r"^(#+) ", lines[j])) is not None and len(m.group(1)) <= level
                ),
                len(lines),
            )
            return "\n".join(lines[i:end])
    raise AssertionError(f"README.md has no section {title!r}")


def tables(first_header: str) -> list[Table]:
    """Every table of the README whose first column is headed ``first_header``."""
    found: list[Table] = []
    header: list[str] = []
    rows: list[tuple[str, ...]] = []
    row: list[str] = []
    line = 0
    for token in _tokens():
        kind = getattr(token, "type", "")
        if kind == "table_open":
            header, rows, line = [], [], (getattr(token, "map", None) or [0])[0] + 1
        elif kind == "tr_open":
            row = []
        elif kind == "inline" and row is not None:
            row.append(str(getattr(token, "content", "")))
        elif kind == "tr_close":
            if not header:
                header = row
            else:
                rows.append(tuple(row))
        elif kind == "table_close" and header and header[0] == first_header:
            found.append(Table(tuple(header), tuple(rows), line))
    return found


def status_codes(text: str) -> set[int]:
    """The HTTP status codes a piece of README text names."""
    return {int(code) for code in STATUS_CODE.findall(text)}


def code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)
