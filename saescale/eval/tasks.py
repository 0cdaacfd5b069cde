"""Registry of binary probe tasks.

A task labels the contexts of a :class:`~saescale.eval.probe_data.Pool`:

- sequence-level: labels (M,) with 1 / 0 per context, -1 = not part of the task
- token-level:    labels (M, T) with 1 / 0 per token, -1 = not part of the task

Each task reads named sources (:data:`saescale.eval.probe_sources.SOURCES`, which record origin and
licence); a task is available when all its sources are (always for the embedded corpus and the
standard library; Debian ``fortunes-*`` packages and the large corpus when installed / built).
The tasks themselves are listed in :mod:`saescale.eval.task_list`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from saescale.errors import SaescaleError
from saescale.eval.probe_data import Pool
from saescale.eval.probe_sources import FORTUNES, SOURCES

Labeler = Callable[[Pool], Tensor]


@dataclass(frozen=True)
class Task:
    """A binary probe task: which sources it reads, its level, how it labels a pool, and what 1 / 0 mean."""

    name: str
    level: str  # 'sequence' or 'token'
    sources: tuple[str, ...]
    label: Labeler
    doc: str

    @property
    def source_doc(self) -> str:
        """Where the task's text comes from (its sources' origins, joined)."""
        return "; ".join(dict.fromkeys(SOURCES[s].origin for s in self.sources))

    @property
    def licence(self) -> str:
        """The licences of the task's sources, joined."""
        return "; ".join(dict.fromkeys(SOURCES[s].licence for s in self.sources))

    def missing(self, root: Path = FORTUNES) -> str | None:
        """None when every source's data is present, else how to get the first missing one (one line)."""
        return next((m for s in self.sources if (m := SOURCES[s].missing(root))), None)

    def available(self, root: Path = FORTUNES) -> bool:
        return self.missing(root) is None


def by_meta(pos: Callable[[dict], bool], neg: Callable[[dict], bool]) -> Labeler:
    """Sequence labels from each context's document meta: 1 if pos(meta), 0 if neg(meta), else -1."""

    def label(pool: Pool) -> Tensor:
        metas = [pool.docs[i].meta for i in pool.doc.tolist()]
        return torch.tensor([1 if pos(m) else 0 if neg(m) else -1 for m in metas], dtype=torch.long)

    return label


def _token_labels(pool: Pool, keep: Callable[[dict], bool], rule: Callable[[str, int, int, dict], int]) -> Tensor:
    """(M, T) labels rule(doc text, char start, char end, per-doc cache) for tokens of documents with keep(meta)."""
    out = torch.full(pool.tokens.shape, -1, dtype=torch.long)
    ends = torch.zeros(len(pool.docs), dtype=torch.long).scatter_reduce(0, pool.doc, pool.spans[..., 1].amax(1), "amax")
    caches: dict[int, dict] = {}
    for m, (d, spans) in enumerate(zip(pool.doc.tolist(), pool.spans.tolist())):
        doc = pool.docs[d]
        if not keep(doc.meta):
            continue
        cache = caches.setdefault(d, {"end": int(ends[d])})  # end: the last character any context of d reads
        for t, (a, b) in enumerate(spans):
            if a >= 0:
                out[m, t] = rule(doc.text, a, b, cache)
    return out


def by_token_text(rule: Callable[[str], int], keep: Callable[[dict], bool] = lambda m: True) -> Labeler:
    """Token labels rule(token text) in {1, 0, -1} (text read from the document via char spans)."""
    return lambda pool: _token_labels(pool, keep, lambda text, a, b, _: rule(text[a:b]))


def by_char_class(classes: Callable[[str], Tensor], keep: Callable[[dict], bool]) -> Labeler:
    """Token labels = classes(document text) (L,) at the token's first non-blank character (-1 for blank tokens)."""

    def rule(text: str, a: int, b: int, cache: dict) -> int:
        piece = text[a:b]
        if not piece.strip():
            return -1
        if "c" not in cache:
            cache["c"] = classes(text[: cache["end"]]).tolist()  # the text up to the last character read
        return cache["c"][a + len(piece) - len(piece.lstrip())]

    return lambda pool: _token_labels(pool, keep, rule)


def select_tasks(spec: str, root: Path = FORTUNES) -> list[Task]:
    """Tasks named in comma-separated ``spec``; 'all' = every task whose data is present.

    Naming a task whose data is missing raises a one-line error saying what to install or build.
    """
    from saescale.eval.task_list import TASKS

    if spec.strip() == "all":
        return [t for t in TASKS.values() if t.available(root)]
    out = []
    for name in (s.strip() for s in spec.split(",") if s.strip()):
        if name not in TASKS:
            raise SaescaleError(f"unknown probe task {name!r}; choose from {', '.join(TASKS)} or 'all'")
        task = TASKS[name]
        if (why := task.missing(root)) is not None:
            raise SaescaleError(f"probe task {name!r} needs {why}")
        out.append(task)
    if not out:
        raise SaescaleError("no probe tasks selected; give --probe-tasks all or task names")
    return out


def __getattr__(name: str):  # TASKS lives in task_list (it imports this module); keep `tasks.TASKS` working
    if name == "TASKS":
        from saescale.eval.task_list import TASKS

        return TASKS
    raise AttributeError(name)
