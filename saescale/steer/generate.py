"""Greedy continuations of a prompt, with and without steering (reproducible: no sampling)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from saescale.activations.lm import quiet_transformers
from saescale.errors import SaescaleError
from saescale.sae.base import SparseAutoencoder
from saescale.steer.hook import steer


def prompt_ids(tokenizer, prompt: str, bos: bool = True) -> Tensor:
    """Token ids (1, T) of ``prompt``, after the tokenizer's BOS when ``bos`` (as the SAE's training
    contexts began) and it has one; one line for a prompt with no tokens."""
    if not prompt.strip():
        raise SaescaleError("the prompt is empty: give --prompt with some text to continue")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if bos and tokenizer.bos_token_id is not None and (not ids or ids[0] != tokenizer.bos_token_id):
        ids = [tokenizer.bos_token_id, *ids]
    return torch.tensor([ids], dtype=torch.long)


@torch.no_grad()
def greedy(model: nn.Module, ids: Tensor, tokens: int, pad_id: int = 0) -> Tensor:
    """The ``tokens`` (or fewer, at end of sequence) new token ids (m,) that greedy decoding appends to
    ``ids`` (1, T): argmax at every step, so the same model and prompt always give the same ids."""
    if tokens < 1:
        raise SaescaleError(f"--tokens must be >= 1, got {tokens}")
    ids = ids.to(next(model.parameters()).device)
    with quiet_transformers():  # the model's sampling defaults (temperature, top_p) are unused: no warning
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                             do_sample=False, pad_token_id=pad_id)
    return out[0, ids.shape[1]:].cpu()


class Continuations(NamedTuple):
    """The prompt's greedy continuation without and with steering: new token ids (m,) and their text."""

    plain_ids: Tensor
    steered_ids: Tensor
    plain: str
    steered: str


def compare(model: nn.Module, tokenizer, sae: SparseAutoencoder, hook: str, latent: int, ids: Tensor, tokens: int,
            scale: float | None = None, clamp: float | None = None) -> Continuations:
    """Greedy continuations of ``ids`` (1, T), ``tokens`` new tokens each, plain and steered
    (:func:`~saescale.steer.hook.steer` with ``scale`` or ``clamp``)."""
    pad = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
    plain = greedy(model, ids, tokens, pad)
    with steer(model, sae, hook, latent, scale=scale, clamp=clamp):
        steered = greedy(model, ids, tokens, pad)
    text = [tokenizer.decode(t.tolist(), skip_special_tokens=True) for t in (plain, steered)]
    return Continuations(plain, steered, *text)
