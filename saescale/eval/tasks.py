"""Registry of binary probe tasks.

A task labels the contexts of a :class:`~saescale.eval.probe_data.Pool`:

- sequence-level: labels (M,) with 1 / 0 per context, -1 = not part of the task
- token-level:    labels (M, T) with 1 / 0 per token, -1 = not part of the task

Built-in tasks use data that is always present (the embedded corpus and Python's standard
library); optional tasks (``package`` set) switch on when their Debian package is installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from saescale.errors import SaescaleError
from saescale.eval.probe_data import FORTUNES, Pool, comment_mask

Labeler = Callable[[Pool], Tensor]


@dataclass(frozen=True)
class Task:
    """A binary probe task: which sources it reads, its level, and how it labels a pool."""

    name: str
    level: str  # 'sequence' or 'token'
    sources: tuple[str, ...]
    label: Labeler
    doc: str
    package: str | None = None  # Debian package providing the data (optional tasks)

    def available(self, root=FORTUNES) -> bool:
        return self.package is None or any((root / self.package.split("-", 1)[1]).glob("*"))


def _by_meta(pos: Callable[[dict], bool], neg: Callable[[dict], bool]) -> Labeler:
    """Sequence labels from each context's document meta: 1 if pos(meta), 0 if neg(meta), else -1."""

    def label(pool: Pool) -> Tensor:
        metas = [pool.docs[i].meta for i in pool.doc.tolist()]
        return torch.tensor([1 if pos(m) else 0 if neg(m) else -1 for m in metas], dtype=torch.long)

    return label


def _by_token_text(rule: Callable[[str], int], sources: tuple[str, ...] | None = None) -> Labeler:
    """Token labels rule(token text) in {1, 0, -1} (text read from the document via char spans)."""

    def label(pool: Pool) -> Tensor:
        out = torch.full(pool.tokens.shape, -1, dtype=torch.long)
        for m, (d, spans) in enumerate(zip(pool.doc.tolist(), pool.spans.tolist())):
            doc = pool.docs[d]
            if sources and doc.meta["source"] not in sources:
                continue
            for t, (a, b) in enumerate(spans):
                if a >= 0:
                    out[m, t] = rule(doc.text[a:b])
        return out

    return label


def _comment_labels(pool: Pool) -> Tensor:
    """Token labels for Python files: 1 inside a comment, 0 other non-blank code tokens."""
    out = torch.full(pool.tokens.shape, -1, dtype=torch.long)
    masks: dict[int, Tensor] = {}
    for m, (d, spans) in enumerate(zip(pool.doc.tolist(), pool.spans.tolist())):
        doc = pool.docs[d]
        if doc.meta["source"] != "python":
            continue
        mask = masks.setdefault(d, comment_mask(doc.text))
        for t, (a, b) in enumerate(spans):
            text = doc.text[a:b] if a >= 0 else ""
            if text.strip():
                first = a + len(text) - len(text.lstrip())
                out[m, t] = int(mask[first])
    return out


def _capitalised(text: str) -> int:
    s = text.strip()
    return -1 if not s or not s[0].isalpha() else int(s[0].isupper())


def _digit(text: str) -> int:
    s = text.strip()
    return -1 if not s else int(any(c.isdigit() for c in s))


PROSE = ("sotu", "moby-dick")

TASKS: dict[str, Task] = {t.name: t for t in [
    Task("sotu_party", "sequence", ("sotu",),
         _by_meta(lambda m: m.get("party") == "Democratic", lambda m: m.get("party") == "Republican"),
         "State of the Union: Democratic (1) vs Republican (0) president"),
    Task("sotu_era", "sequence", ("sotu",),
         _by_meta(lambda m: m.get("year", 0) >= 1900, lambda m: 0 < m.get("year", 0) < 1900),
         "State of the Union: delivered in 1900 or later (1) vs before 1900 (0)"),
    Task("novel_vs_speech", "sequence", PROSE,
         _by_meta(lambda m: m["source"] == "moby-dick", lambda m: m["source"] == "sotu"),
         "Moby-Dick (1) vs State of the Union (0)"),
    Task("code_vs_prose", "sequence", ("python", *PROSE),
         _by_meta(lambda m: m["source"] == "python", lambda m: m["source"] in PROSE),
         "Python standard-library source (1) vs English prose (0)"),
    Task("comment_vs_code", "token", ("python",), _comment_labels,
         "token of a Python file inside a # comment (1) vs in code (0)"),
    Task("capitalised", "token", PROSE, _by_token_text(_capitalised, PROSE),
         "prose token starting with an upper-case letter (1) vs a lower-case letter (0)"),
    Task("has_digit", "token", ("python", *PROSE), _by_token_text(_digit),
         "token containing a digit (1) vs any other non-blank token (0)"),
    Task("german_vs_english", "sequence", ("fortunes-de", *PROSE),
         _by_meta(lambda m: m["source"] == "fortunes-de", lambda m: m["source"] in PROSE),
         "German fortunes (1) vs English prose (0)", package="fortunes-de"),
    Task("french_vs_english", "sequence", ("fortunes-fr", *PROSE),
         _by_meta(lambda m: m["source"] == "fortunes-fr", lambda m: m["source"] in PROSE),
         "French fortunes (1) vs English prose (0)", package="fortunes-fr"),
]}


def select_tasks(spec: str, root=FORTUNES) -> list[Task]:
    """Tasks named in comma-separated ``spec``; 'all' = every built-in task plus optional ones whose data is present.

    Naming an optional task whose data is missing raises an error naming the Debian package.
    """
    if spec.strip() == "all":
        return [t for t in TASKS.values() if t.available(root)]
    out = []
    for name in (s.strip() for s in spec.split(",") if s.strip()):
        if name not in TASKS:
            raise SaescaleError(f"unknown probe task {name!r}; choose from {', '.join(TASKS)} or 'all'")
        task = TASKS[name]
        if not task.available(root):
            raise SaescaleError(
                f"probe task {name!r} needs {root / task.package.split('-', 1)[1]}: install Debian package {task.package} "
                f"(apt-get install {task.package})"
            )
        out.append(task)
    if not out:
        raise SaescaleError("no probe tasks selected; give --probe-tasks all or task names")
    return out
