"""Two texts for comparison at a glance: side by side in labelled columns, or labelled blocks when narrow."""

from __future__ import annotations

import textwrap
from itertools import zip_longest

GAP = " | "
MIN_COLUMN = 28  # narrower columns than this: one block under the other


def wrap(text: str, width: int) -> list[str]:
    """``text`` wrapped to ``width`` columns, its own line breaks kept (an empty text: one empty line)."""
    lines: list[str] = []
    for para in text.splitlines() or [""]:
        lines += textwrap.wrap(para.expandtabs(4), width, replace_whitespace=False, drop_whitespace=True) or [""]
    return lines


def side_by_side(left_label: str, left: str, right_label: str, right: str, width: int) -> str:
    """The two texts in two labelled columns of (width - 3) // 2 characters, split by a rule; if that is
    under :data:`MIN_COLUMN`, two labelled blocks (left first) wrapped to ``width``."""
    col = (width - len(GAP)) // 2
    if col < MIN_COLUMN:
        width = max(width, 20)
        return "\n".join([f"{left_label}:", *wrap(left, width), "", f"{right_label}:", *wrap(right, width)])
    rows = [(left_label[:col], right_label[:col]), ("-" * col, "-" * col)]
    rows += list(zip_longest(wrap(left, col), wrap(right, col), fillvalue=""))
    return "\n".join(f"{a:<{col}}{GAP}{b}".rstrip() for a, b in rows)
