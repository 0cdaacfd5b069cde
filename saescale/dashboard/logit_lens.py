"""Logit lens of decoder rows: the tokens each latent's direction promotes and suppresses most.

A latent's contribution to the raw activation is z_i * s * W_dec[i] with s > 0 a per-token scale for
every input normalisation (:mod:`saescale.sae.normalize`: layernorm and std divide by a per-token scale
and add back a per-token multiple of the all-ones vector, which is z-independent; mean_sq divides by a
constant; none is the identity). So the raw-space direction is W_dec[i] up to a positive factor, and the
ranking of tokens by

    effect_i = W_U (g ⊙ P W_dec[i])

is that of the direct effect on the logits, where g is the model's final norm weight (RMSNorm / LayerNorm
``weight``; ones when the model has none) and P centres the vector when the final norm is a LayerNorm
(it subtracts the mean over channels; RMSNorm does not). The final norm's division by the residual's
scale is positive and the same for every token, so it changes no ranking and is left out; its bias adds
the same to every latent and is left out too. The layers between the hook and the unembedding are
skipped (the direct, "logit lens" path), as in SAE dashboards' logit tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class LogitLens:
    """Per latent: ``top`` promoted and suppressed tokens with their effect (n, top) each."""

    pos_ids: Tensor
    pos_values: Tensor
    neg_ids: Tensor
    neg_values: Tensor
    final_norm: str  # what was applied: 'rmsnorm weight', 'layernorm weight (centred)' or 'none'
    hist_edges: Tensor  # (n, bins + 1) per latent: edges of the histogram of all vocabulary effects
    hist_counts: Tensor  # (n, bins)


def final_norm(model: nn.Module) -> tuple[nn.Module | None, bool]:
    """The model's final norm before the unembedding (llama/mistral ``model.norm``, GPT-2 ``transformer.ln_f``)
    and whether it centres (LayerNorm); (None, False) when none is found."""
    for path in ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.final_layernorm",
                 "model.decoder.final_layer_norm"):
        mod = model
        for part in path.split("."):
            mod = getattr(mod, part, None)
            if mod is None:
                break
        if mod is not None:
            return mod, isinstance(mod, nn.LayerNorm)
    return None, False


def directions(model: nn.Module, W_dec: Tensor) -> tuple[Tensor, str]:
    """Raw decoder rows (n, d) mapped through the final norm's linear part (see module docstring)."""
    norm, centres = final_norm(model)
    v = W_dec.float()
    if centres:
        v = v - v.mean(-1, keepdim=True)
    weight = getattr(norm, "weight", None) if norm is not None else None
    if weight is not None:
        v = v * weight.detach().float().cpu()
        return v, "layernorm weight (centred)" if centres else f"{type(norm).__name__} weight"
    return v, "centred" if centres else "none"


@torch.no_grad()
def logit_lens(model: nn.Module, W_dec: Tensor, top: int = 10, block: int = 256, bins: int = 40) -> LogitLens:
    """Top ``top`` promoted and suppressed token ids per decoder row, ``block`` rows at a time (memory
    O(block * vocab)); also a ``bins``-bin histogram of every row's effects over the vocabulary."""
    W_U = model.get_output_embeddings().weight.detach().float().cpu()  # (V, d)
    v, applied = directions(model, W_dec)
    n, top = len(v), min(top, W_U.shape[0])
    out = {k: [] for k in ("pi", "pv", "ni", "nv", "he", "hc")}
    for lo in range(0, n, block):
        eff = v[lo : lo + block] @ W_U.T  # (b, V)
        pv, pi = eff.topk(top, dim=1)
        nv, ni = eff.topk(top, dim=1, largest=False)
        mn, mx = eff.min(1).values, eff.max(1).values
        width = (mx - mn).clamp_min(1e-12) / bins
        b = ((eff - mn[:, None]) / width[:, None]).floor().clamp(0, bins - 1).long()
        counts = torch.zeros(len(eff), bins, dtype=torch.long).scatter_add_(1, b, torch.ones_like(b))
        edges = mn[:, None] + width[:, None] * torch.arange(bins + 1)
        for k, t in zip(out, (pi, pv, ni, nv, edges, counts)):
            out[k].append(t)
    cat = {k: torch.cat(t) for k, t in out.items()}
    return LogitLens(cat["pi"], cat["pv"], cat["ni"], cat["nv"], applied, cat["he"], cat["hc"])
