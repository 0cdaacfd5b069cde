"""Load a model and tokenise a corpus once, for everything that reads the same ActivationConfig."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from saescale.activations.config import ActivationConfig
from saescale.activations.corpus import Contexts, Document, load_documents, tokenize_contexts
from saescale.activations.hooks import default_hook, hook_width
from saescale.activations.lm import load_model
from saescale.activations.precision import RESOLVED, resolve_model_dtype


@dataclass
class LMText:
    """A loaded model, its resolved hook point and width, and the corpus cut into contexts (M, T)."""

    model: nn.Module
    tokenizer: Any
    hook: str
    d: int
    docs: list[Document]
    contexts: Contexts
    model_dtype: str = "float32"  # the resolved forward dtype ('float32' or 'bfloat16')


def in_dtype(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model`` if its parameters are already ``dtype``, else a copy with its parameters cast to ``dtype``
    (the caller's model is untouched). Buffers keep their dtype, as ``from_pretrained(dtype=...)`` leaves
    them (RoPE's float32 ``inv_freq``), so the copy equals the model loaded in ``dtype``."""
    if next(model.parameters()).dtype == dtype:
        return model
    model = copy.deepcopy(model)
    for p in model.parameters():  # tied weights are one Parameter: cast once, still tied
        p.data = p.data.to(dtype)
    return model


def load_lm(name: str, model_dtype: str, lm: tuple | None = None) -> tuple[nn.Module, Any, str]:
    """(model, tokenizer, resolved dtype name): model ``name`` in ``model_dtype`` (auto resolved by the
    probe), or the given ``lm`` = (model, tokenizer), cast to that dtype (a copy) if it is not in it."""
    resolved = resolve_model_dtype(model_dtype)
    if lm is None:
        model, tokenizer = load_model(name, RESOLVED[resolved])
    else:
        model, tokenizer = in_dtype(lm[0], RESOLVED[resolved]), lm[1]
    return model, tokenizer, resolved


def load_lm_text(cfg: ActivationConfig, lm: tuple | None = None, hook: str | None = None) -> LMText:
    """Load ``cfg.model`` (or use ``lm`` = (model, tokenizer)), resolve the hook (``hook``, else
    ``cfg.hook``, else the default ~2/3 depth), read ``cfg.corpus`` and tokenise it into contexts.
    The model runs in ``cfg.model_dtype`` (resolved: see :mod:`saescale.activations.precision`)."""
    model, tokenizer, resolved = load_lm(cfg.model, cfg.model_dtype, lm)
    hook = hook or cfg.hook or default_hook(model)
    docs = load_documents(cfg.corpus)
    contexts = tokenize_contexts(docs, tokenizer, cfg.context_len, cfg.prepend_bos)
    return LMText(model, tokenizer, hook, hook_width(model, hook), docs, contexts, resolved)
