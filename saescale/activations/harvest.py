"""Harvest activations at one hook point for a batch of token contexts."""

from __future__ import annotations

import torch
from torch import nn

from saescale.activations.hooks import capture


def positions_kept(context_len: int, keep_first: bool) -> torch.Tensor:
    """Positions kept in each context, (T',) long: 0..T-1, or 1..T-1 when position 0 (the attention sink) is dropped."""
    return torch.arange(0 if keep_first else 1, context_len, dtype=torch.long)


def harvest_contexts(model: nn.Module, hook: str, tokens: torch.Tensor, keep_first: bool) -> torch.Tensor:
    """Activations at ``hook`` for contexts ``tokens`` (Bc, T): float32 (Bc * T', d), context-major.

    T' = len(positions_kept(T, keep_first)); row ``i * T' + j`` is context i, position
    ``positions_kept(T, keep_first)[j]``. The forward pass stops after the hooked module.
    Returned on the CPU.
    """
    return harvest_hooks(model, [hook], tokens, keep_first)[0]


def harvest_hooks(model: nn.Module, hooks: list[str], tokens: torch.Tensor, keep_first: bool) -> list[torch.Tensor]:
    """Activations at each of ``hooks`` from one forward pass of ``tokens`` (Bc, T): float32 (Bc * T', d_h)
    each, rows as :func:`harvest_contexts`'s (a transcoder's input and target come from the same pass)."""
    device = next(model.parameters()).device
    got = capture(model, hooks, tokens.to(device))  # {hook: (Bc, T, d_h)}
    out = []
    for hook in hooks:
        acts = got[hook][:, 0 if keep_first else 1 :]  # (Bc, T', d_h)
        out.append(acts.reshape(-1, acts.shape[-1]).float().cpu())
    return out
