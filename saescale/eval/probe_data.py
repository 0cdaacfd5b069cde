"""Labelled text for probe tasks: document sources and a pool of token contexts cut from them.

Sources (each a list of :class:`Document` with ``meta['source']``):

- ``sotu``, ``moby-dick``: the embedded default corpus (always present)
- ``python``: Python's own standard-library ``*.py`` files (always present)
- ``fortunes-XX``: Debian ``fortunes-XX`` packages (files under /usr/share/games/fortunes/XX),
  one document per file (optional; missing data names the package to install)

A :class:`Pool` holds M contexts of T tokens (BOS + T-1 text tokens when the model uses BOS),
``per_doc`` contexts drawn at random from each of ``n_docs`` random documents per source, with
the character span of every token, so token-level labels (e.g. "inside a comment") can be read
off the text.
"""

from __future__ import annotations

import io
import sysconfig
import tokenize
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from saescale.activations.corpus import Document, load_documents
from saescale.errors import SaescaleError

FORTUNES = Path("/usr/share/games/fortunes")
PY_CHARS = 20_000  # characters read from each standard-library file


def fortune_docs(lang: str, root: Path = FORTUNES) -> list[Document]:
    """Fortune files of Debian package fortunes-<lang>, one document per file ('%' lines removed)."""
    folder = root / lang
    files = sorted(p for p in folder.glob("*") if p.is_file() and not p.suffix) if folder.is_dir() else []
    if not files:
        raise SaescaleError(f"no fortune files in {folder}: install Debian package fortunes-{lang} (apt-get install fortunes-{lang})")
    docs = []
    for p in files:
        text = p.read_text(encoding="utf-8", errors="replace")
        docs.append(Document("\n\n".join(e.strip() for e in text.split("\n%\n") if e.strip()), {"source": f"fortunes-{lang}", "file": p.name}))
    return docs


def python_docs() -> list[Document]:
    """The standard library's top-level ``*.py`` files (first 20k characters each), sorted by name."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    return [Document(p.read_text(encoding="utf-8", errors="replace")[:PY_CHARS], {"source": "python", "file": p.name})
            for p in files]


def source_docs(name: str) -> list[Document]:
    """Documents of source ``name`` (see module docstring)."""
    if name in ("sotu", "moby-dick"):
        return [d for d in load_documents("default") if d.meta.get("source") == name]
    if name == "python":
        return python_docs()
    if name.startswith("fortunes-"):
        return fortune_docs(name.split("-", 1)[1])
    raise SaescaleError(f"unknown probe data source {name!r}")


def comment_mask(text: str) -> Tensor:
    """(len(text),) bool: characters inside a Python comment (via the tokenize module; False if unparsable)."""
    mask = torch.zeros(len(text), dtype=torch.bool)
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                (r0, c0), (r1, c1) = tok.start, tok.end
                mask[starts[r0 - 1] + c0 : starts[r1 - 1] + c1] = True
    except (tokenize.TokenError, SyntaxError, IndentationError):
        pass
    return mask


@dataclass
class Pool:
    """M labelled contexts: tokens (M, T), doc (M,) index into ``docs``, spans (M, T, 2) char offsets (-1 for BOS)."""

    docs: list[Document]
    tokens: Tensor
    doc: Tensor
    spans: Tensor
    sources: list[str] = field(default_factory=list)


def _doc_contexts(text: str, tokenizer, n_text: int) -> tuple[Tensor, Tensor]:
    """All non-overlapping chunks of ``n_text`` tokens: ids (C, n_text), char spans (C, n_text, 2)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids = torch.tensor(enc["input_ids"], dtype=torch.long)
    spans = torch.tensor(enc["offset_mapping"], dtype=torch.long).view(-1, 2)
    c = ids.numel() // n_text
    return ids[: c * n_text].view(c, n_text), spans[: c * n_text].view(c, n_text, 2)


def build_pool(sources: list[str], tokenizer, context_len: int, bos: int | None, n_docs: int, per_doc: int,
               seed: int) -> Pool:
    """Draw up to ``per_doc`` contexts from each of ``n_docs`` random documents of every source."""
    n_text = context_len - (bos is not None)
    g = torch.Generator().manual_seed(seed)
    docs, toks, doc_ids, spans = [], [], [], []
    for src in sources:
        pool_docs = source_docs(src)
        for j in torch.randperm(len(pool_docs), generator=g)[:n_docs].tolist():
            ids, sp = _doc_contexts(pool_docs[j].text, tokenizer, n_text)
            if len(ids) == 0:
                continue
            pick = torch.randperm(len(ids), generator=g)[:per_doc].sort().values
            docs.append(pool_docs[j])
            toks.append(ids[pick])
            spans.append(sp[pick])
            doc_ids.append(torch.full((len(pick),), len(docs) - 1, dtype=torch.long))
    if not toks:
        raise SaescaleError(f"probe sources {sources} gave no context of {context_len} tokens; lower --context-len")
    tokens, spans_t = torch.cat(toks), torch.cat(spans)
    if bos is not None:
        tokens = torch.cat([torch.full((len(tokens), 1), bos, dtype=torch.long), tokens], 1)
        spans_t = torch.cat([torch.full((len(spans_t), 1, 2), -1, dtype=torch.long), spans_t], 1)
    return Pool(docs, tokens, torch.cat(doc_ids), spans_t, list(sources))
