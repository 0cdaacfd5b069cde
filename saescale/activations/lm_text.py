"""Load a model and tokenise a corpus once, for everything that reads the same ActivationConfig."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from saescale.activations.config import ActivationConfig
from saescale.activations.corpus import Contexts, Document, load_documents, tokenize_contexts
from saescale.activations.hooks import default_hook, hook_width
from saescale.activations.lm import load_model


@dataclass
class LMText:
    """A loaded model, its resolved hook point and width, and the corpus cut into contexts (M, T)."""

    model: nn.Module
    tokenizer: Any
    hook: str
    d: int
    docs: list[Document]
    contexts: Contexts


def load_lm_text(cfg: ActivationConfig, lm: tuple | None = None, hook: str | None = None) -> LMText:
    """Load ``cfg.model`` (or use ``lm`` = (model, tokenizer)), resolve the hook (``hook``, else
    ``cfg.hook``, else the default ~2/3 depth), read ``cfg.corpus`` and tokenise it into contexts."""
    model, tokenizer = lm or load_model(cfg.model)
    hook = hook or cfg.hook or default_hook(model)
    docs = load_documents(cfg.corpus)
    contexts = tokenize_contexts(docs, tokenizer, cfg.context_len, cfg.prepend_bos)
    return LMText(model, tokenizer, hook, hook_width(model, hook), docs, contexts)
