"""Labelled text for probe tasks: a pool of token contexts cut from the probe data sources.

The sources (embedded corpus, Python stdlib, Debian fortunes, the large corpus) are in
:mod:`saescale.eval.probe_sources`. A :class:`Pool` holds M contexts of T tokens (BOS + T-1 text
tokens when the model uses BOS), ``per_doc`` contexts drawn at random from each of ``n_docs``
random documents per source, with the character span of every token, so token-level labels
(e.g. "inside a comment") can be read off the text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from saescale.activations.corpus import Document
from saescale.errors import SaescaleError
from saescale.eval.probe_sources import FORTUNES, source_docs
from saescale.eval.token_rules import comment_mask

__all__ = ["Document", "Pool", "build_pool", "comment_mask"]  # comment_mask: re-exported

WINDOW_CHARS = 16  # characters tokenized per context token wanted: a random window of the document ~4x the
                   # contexts' length in English text, from which ``per_doc`` contexts are drawn


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


def _window(text: str, chars: int, g: torch.Generator) -> int:
    """Start of a random window of ``chars`` characters in ``text`` (0 when the text is shorter)."""
    return 0 if len(text) <= chars else int(torch.randint(len(text) - chars + 1, (1,), generator=g))


def build_pool(sources: list[str], tokenizer, context_len: int, bos: int | None, n_docs: int, per_doc: int,
               seed: int, fortunes_root: Path = FORTUNES) -> Pool:
    """Draw up to ``per_doc`` contexts from each of ``n_docs`` random documents of every source.

    Each document is tokenized in one random window of ``WINDOW_CHARS * per_doc * context_len`` characters
    (spans stay offsets into the whole text). A document drawn twice (sources overlapping) is kept once, so
    train/test splits by document stay disjoint.
    """
    n_text = context_len - (bos is not None)
    g = torch.Generator().manual_seed(seed)
    docs, toks, doc_ids, spans = [], [], [], []
    cache: dict = {"root": fortunes_root}
    seen: set[int] = set()
    for src in sources:
        pool_docs = source_docs(src, cache)
        for j in torch.randperm(len(pool_docs), generator=g)[:n_docs].tolist():
            if id(pool_docs[j]) in seen:
                continue
            seen.add(id(pool_docs[j]))
            text, chars = pool_docs[j].text, WINDOW_CHARS * per_doc * n_text
            start = _window(text, chars, g)
            ids, sp = _doc_contexts(text[start : start + chars], tokenizer, n_text)
            sp = sp + start
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
