"""What every metric evaluates on: the SAE, its model and hook point, and held-out token contexts.

The model, hook, corpus and context settings are those recorded in the SAE's ``cfg.json``
(``extra["activations"]``), so the SAE is evaluated where it was trained. Eval contexts are a
seeded random subset of the corpus's validation documents (the same document split as the
cache and stream, :data:`SPLIT_SEED`):

    tokens: (M, T) contexts      acts: (M, T', d) raw activations at the kept positions
    positions: (T',) the kept positions (1..T-1 by default; 0..T-1 with keep_first)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from saescale.activations.config import ActivationConfig
from saescale.activations.corpus import SPLIT_SEED, load_documents, split_documents, tokenize_contexts
from saescale.activations.harvest import harvest_contexts, positions_kept
from saescale.activations.hooks import default_hook, hook_width
from saescale.activations.lm import load_model
from saescale.configs import config_from_dict
from saescale.errors import SaescaleError
from saescale.sae.base import SparseAutoencoder
from saescale.sae.io import load_sae, read_cfg


@dataclass
class EvalSet:
    """An SAE with its language model and held-out contexts (see module docstring for shapes)."""

    sae: SparseAutoencoder
    model: Any
    tokenizer: Any
    hook: str
    acts_cfg: ActivationConfig
    tokens: Tensor  # (M, T) long
    acts: Tensor  # (M, T', d) float32, raw space
    positions: Tensor  # (T',) long

    @property
    def flat_acts(self) -> Tensor:
        """(M * T', d) raw activations, context-major."""
        return self.acts.reshape(-1, self.acts.shape[-1])

    @property
    def pad_id(self) -> int:
        """Token used as 'padding' (N2G wildcards): pad, else EOS, else 0."""
        t = self.tokenizer
        return next((i for i in (t.pad_token_id, t.eos_token_id) if i is not None), 0)

    @property
    def bos_id(self) -> int | None:
        return self.tokenizer.bos_token_id if self.acts_cfg.prepend_bos else None


def recorded_activations(extra: dict[str, Any], where: str) -> ActivationConfig:
    """The ActivationConfig the SAE was trained with (from cfg.json's ``extra``)."""
    rec = extra.get("activations")
    if not isinstance(rec, dict) or not rec:
        raise SaescaleError(
            f"{where} records no language model (trained on synthetic data?); eval needs an SAE trained with --acts cache or stream"
        )
    return config_from_dict(ActivationConfig, rec, what=f"{where} extra.activations")


def val_contexts(cfg: ActivationConfig, tokenizer, n_contexts: int, seed: int) -> Tensor:
    """(M, T) contexts: a seeded random subset of ``n_contexts`` contexts of the validation documents."""
    docs = load_documents(cfg.corpus)
    _, val = split_documents(len(docs), cfg.val_fraction, SPLIT_SEED)
    if not val:
        raise SaescaleError("the SAE's corpus has no validation documents; retrain with --val-fraction > 0")
    ctx = tokenize_contexts([docs[i] for i in val], tokenizer, cfg.context_len, cfg.prepend_bos)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ctx), generator=g)[:n_contexts]
    return ctx.tokens[idx.sort().values]


def harvest(model, hook: str, tokens: Tensor, keep_first: bool, batch: int = 16, desc: str = "harvest") -> Tensor:
    """Raw activations (M, T', d) of contexts ``tokens`` (M, T), ``batch`` contexts per forward."""
    t_kept = tokens.shape[1] - (not keep_first)
    parts = []
    for i in tqdm(range(0, len(tokens), batch), desc=desc, leave=False):
        chunk = tokens[i : i + batch]
        parts.append(harvest_contexts(model, hook, chunk, keep_first).view(len(chunk), t_kept, -1))
    return torch.cat(parts)


def load_eval_set(sae_dir: str | Path, n_contexts: int, seed: int, model_override: str = "", lm=None) -> EvalSet:
    """Load the SAE at ``sae_dir``, its model (or ``lm``) and hook, and harvest ``n_contexts`` val contexts."""
    sae_cfg, extra = read_cfg(sae_dir)
    acts_cfg = recorded_activations(extra, str(Path(sae_dir) / "cfg.json"))
    if model_override:
        acts_cfg.model = model_override
    sae = load_sae(sae_dir).eval()
    sae.requires_grad_(False)
    model, tokenizer = lm or load_model(acts_cfg.model)
    hook = acts_cfg.hook or default_hook(model)
    width = hook_width(model, hook)
    if width != sae_cfg.d:
        raise SaescaleError(
            f"the SAE has d={sae_cfg.d} but hook '{hook}' of model '{acts_cfg.model}' has width {width}; "
            "evaluate it on the model and hook it was trained on"
        )
    tokens = val_contexts(acts_cfg, tokenizer, n_contexts, seed)
    acts = harvest(model, hook, tokens, acts_cfg.keep_first)
    return EvalSet(sae, model, tokenizer, hook, acts_cfg, tokens, acts,
                   positions_kept(acts_cfg.context_len, acts_cfg.keep_first))
