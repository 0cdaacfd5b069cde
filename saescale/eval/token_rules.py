"""Character classes for token-level probe tasks: text (L characters) -> (L,) int8 tensor of 1 / 0 / -1.

A token is labelled by the class of its first non-blank character (see
:func:`saescale.eval.tasks.by_char_class`). Each rule is a plain function of the document text.
"""

from __future__ import annotations

import io
import keyword
import re
import tokenize

import torch
from torch import Tensor

_STRING_TYPES = {tokenize.STRING} | {getattr(tokenize, n) for n in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")
                                     if hasattr(tokenize, n)}


def _py_tokens(text: str):
    """(type, start char, end char, string) of Python tokens of ``text`` (stops quietly where it stops parsing)."""
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            (r0, c0), (r1, c1) = tok.start, tok.end
            if r1 - 1 < len(starts):
                yield tok.type, starts[r0 - 1] + c0, starts[r1 - 1] + c1, tok.string
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return


def comment_mask(text: str) -> Tensor:
    """(L,) bool: characters inside a Python comment (via the tokenize module; False past where it stops parsing)."""
    mask = torch.zeros(len(text), dtype=torch.bool)
    for typ, a, b, _ in _py_tokens(text):
        if typ == tokenize.COMMENT:
            mask[a:b] = True
    return mask


def py_string_classes(text: str) -> Tensor:
    """Python: 1 inside a string literal (incl. f-strings and docstrings), 0 other code, -1 comments / unparsed."""
    out = torch.full((len(text),), -1, dtype=torch.int8)
    for typ, a, b, _ in _py_tokens(text):
        if typ != tokenize.COMMENT:
            out[a:b] = int(typ in _STRING_TYPES)
    return out


def py_keyword_classes(text: str) -> Tensor:
    """Python: 1 on a keyword (def, return, if, ...), 0 on any other name, -1 elsewhere."""
    out = torch.full((len(text),), -1, dtype=torch.int8)
    for typ, a, b, s in _py_tokens(text):
        if typ == tokenize.NAME:
            out[a:b] = int(keyword.iskeyword(s))
    return out


def _regex_classes(text: str, pattern: re.Pattern, flags_rest: int = 0) -> Tensor:
    out = torch.full((len(text),), flags_rest, dtype=torch.int8)
    for m in pattern.finditer(text):
        out[m.start():m.end()] = 1
    return out


_C_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)
_HASH_COMMENT = re.compile(r"(?:(?<=\s)|^)#[^\n]*", re.MULTILINE)
_HTML_TAG = re.compile(r"</?[A-Za-z!][^<>\n]{0,200}>")


def c_comment_classes(text: str) -> Tensor:
    """C / JavaScript: 1 inside a // or /* */ comment, 0 elsewhere (string literals not parsed: approximate)."""
    return _regex_classes(text, _C_COMMENT)


def hash_comment_classes(text: str) -> Tensor:
    """Shell / Perl: 1 from a '#' at a line start or after a blank to the line end, 0 elsewhere (approximate)."""
    return _regex_classes(text, _HASH_COMMENT)


def html_tag_classes(text: str) -> Tensor:
    """Mail: 1 inside an HTML tag ``<...>``, 0 elsewhere."""
    return _regex_classes(text, _HTML_TAG)


def _codes(text: str) -> Tensor:
    """(L,) int32 code points of ``text``."""
    return torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32) if text else torch.zeros(0, dtype=torch.int32)


def _paragraph_cumsum(hits: Tensor, codes: Tensor) -> Tensor:
    """(L,) running count of ``hits`` (L,) bool, restarted after each blank line (two newlines in a row)."""
    c = hits.long().cumsum(0)
    nl = codes == ord("\n")
    brk = torch.zeros_like(nl)
    brk[1:] = nl[1:] & nl[:-1]
    idx = torch.where(brk, torch.arange(len(c)), torch.zeros_like(c)).cummax(0).values  # last break at or before i
    return c - torch.where(idx > 0, c[idx], torch.zeros_like(c))


def _toggle_classes(text: str, open_: str, close: str) -> Tensor:
    """1 between ``open_`` and its ``close`` (same char: every other one opens; counts restart at each blank line),
    0 elsewhere (the delimiters themselves count as inside)."""
    codes = _codes(text)
    if open_ == close:
        n = _paragraph_cumsum(codes == ord(open_), codes)
        inside = (n % 2 == 1) | ((codes == ord(close)) & (n > 0))
    else:
        opens, closes = codes == ord(open_), codes == ord(close)
        depth = _paragraph_cumsum(opens, codes) - _paragraph_cumsum(closes, codes)
        inside = (depth > 0) | closes & (depth >= 0)
    return inside.to(torch.int8)


def quote_classes(text: str) -> Tensor:
    """Prose: 1 inside straight double quotes "..." (reset at each paragraph), 0 elsewhere."""
    return _toggle_classes(text, '"', '"')


def paren_classes(text: str) -> Tensor:
    """Prose: 1 inside parentheses (...), 0 elsewhere."""
    return _toggle_classes(text, "(", ")")


def line_start_classes(text: str) -> Tensor:
    """Code: 1 on the first non-blank character of each line, 0 on every other non-blank character."""
    out = torch.zeros(len(text), dtype=torch.int8)
    for m in re.finditer(r"^[ \t]*(\S)", text, re.MULTILINE):
        out[m.start(1)] = 1
    return out


def sentence_start_classes(text: str) -> Tensor:
    """Prose: 1 on a capital letter opening a sentence (after . ! ? or a paragraph break), 0 on other capitals
    that open a word, -1 elsewhere."""
    out = torch.full((len(text),), -1, dtype=torch.int8)
    for m in re.finditer(r"(?<![A-Za-z'])[A-Z]", text):
        before = text[max(m.start() - 8, 0) : m.start()].rstrip(" \t\"'(")[-2:]
        out[m.start()] = int(m.start() < 8) if not before else int(before[-1] in ".!?" or before == "\n\n")
    return out


def all_caps_classes(text: str) -> Tensor:
    """Prose: 1 on the letters of an all-capitals word of 2+ letters (LORD), 0 on a capitalised mixed-case word
    (Lord), -1 elsewhere."""
    out = torch.full((len(text),), -1, dtype=torch.int8)
    for m in re.finditer(r"\b[A-Z][A-Za-z]+\b", text):
        out[m.start():m.end()] = int(m.group().isupper())
    return out
