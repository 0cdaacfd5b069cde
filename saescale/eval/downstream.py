"""Downstream loss: splice reconstructions into the model and measure next-token loss and KL.

For contexts (B, T) with original hook output h (B, T, d) and logits l (B, T, V), and a replacement
h' (equal to h at excluded positions, i.e. position 0 when it is dropped), spliced logits l':

    CE(l)          = mean over scored (b, t) of -log softmax(l[b, t])[x[b, t+1]]
    KL(orig||spl.) = mean over scored (b, t) of sum_v p_v (log p_v - log p'_v),  p = softmax(l), p' = softmax(l')

Scored positions: t in the kept positions with t <= T-2 (the prediction of every kept token
that has a next token). Replacements:

    sae:   h'_t = decode(encode(h_t)) in raw space (normalisation undone with the token's stats); a
           transcoder splices at its target hook h'_t = ŷ(x_t), x_t the source hook's activation of the
           same (unspliced) forward: the target's output replaced by the transcoder's
    zero:  h'_t = 0
    mean:  h'_t = mean of h over the eval tokens (kept positions)

    ΔCE_r = CE_r - CE_orig;   loss recovered vs zero = (CE_zero - CE_sae) / (CE_zero - CE_orig)
                              (and the same with CE_mean)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from saescale.configs import check_valid, valid
from saescale.eval import Track, untracked
from saescale.eval.splice import Splicer
from saescale.sae.base import SparseAutoencoder


@dataclass(frozen=True)
class DownstreamConfig:
    """Downstream loss: reconstructions spliced into the model."""

    contexts: int = valid(48, ">= 1")
    """Contexts spliced for the downstream loss (the first of the eval contexts, which are in random order: a random sample of the split; 4 forward passes each)."""

    def __post_init__(self) -> None:
        check_valid(self, "downstream-")


def next_token_ce(logits: Tensor, tokens: Tensor, scored: Tensor) -> Tensor:
    """Per-position CE (B, S) of logits (B, T, V) predicting tokens (B, T) at positions ``scored`` (S,)."""
    logp = F.log_softmax(logits[:, scored], dim=-1)  # (B, S, V)
    return -logp.gather(-1, tokens[:, scored + 1].unsqueeze(-1)).squeeze(-1)


def kl_div(logits_p: Tensor, logits_q: Tensor, scored: Tensor) -> Tensor:
    """Per-position KL(p || q) (B, S) between logits (B, T, V) at positions ``scored`` (S,)."""
    lp = F.log_softmax(logits_p[:, scored], dim=-1)
    lq = F.log_softmax(logits_q[:, scored], dim=-1)
    return (lp.exp() * (lp - lq)).sum(-1)


@torch.no_grad()
def sae_replacement(sae: SparseAutoencoder, h: Tensor, positions: Tensor, source: Tensor | None = None) -> Tensor:
    """h (B, T, d) with the kept ``positions`` (T',) replaced by the SAE reconstruction in raw space (a
    transcoder's output from ``source`` (B, T, d_in), its input activations)."""
    out = h.clone()
    inp = h if source is None else source
    x = inp[:, positions].reshape(-1, inp.shape[-1])
    out[:, positions] = sae(x).view(h.shape[0], len(positions), -1).to(h.dtype)
    return out


def const_replacement(h: Tensor, positions: Tensor, value: Tensor) -> Tensor:
    """h (B, T, d) with the kept ``positions`` set to ``value`` (d,)."""
    out = h.clone()
    out[:, positions] = value.to(h.dtype)
    return out


@torch.no_grad()
def downstream_metrics(splicer: Splicer, sae: SparseAutoencoder, tokens: Tensor, positions: Tensor, mean_act: Tensor,
                       cfg: DownstreamConfig = DownstreamConfig(), *, batch: int, track: Track = untracked,
                       ) -> dict[str, float]:
    """ΔCE, KL and loss recovered over the first ``cfg.contexts`` of contexts ``tokens`` (M, T), ``batch`` at a
    time; ``mean_act`` (d,) for mean-ablation."""
    tokens = tokens[: cfg.contexts]
    scored = positions[positions <= tokens.shape[1] - 2]
    sums = {k: 0.0 for k in ("ce_orig", "ce_sae", "ce_zero", "ce_mean", "kl_sae", "kl_zero", "kl_mean")}
    count = 0
    for i in track(range(0, len(tokens), batch), "downstream", -(-len(tokens) // batch)):
        ids = tokens[i : i + batch]
        logits, h = splicer.forward_with_capture(ids)
        sums["ce_orig"] += next_token_ce(logits, ids, scored).double().sum().item()
        for name, h2 in (("sae", sae_replacement(sae, h, positions, splicer.last_source)),
                         ("zero", const_replacement(h, positions, torch.zeros(h.shape[-1]))),
                         ("mean", const_replacement(h, positions, mean_act))):
            spliced = splicer.forward_from_hook(ids, h2)
            sums[f"ce_{name}"] += next_token_ce(spliced, ids, scored).double().sum().item()
            sums[f"kl_{name}"] += kl_div(logits, spliced, scored).double().sum().item()
        count += ids.shape[0] * len(scored)
    return dict(summarize(sums, count), contexts=len(tokens))


def summarize(sums: dict[str, float], count: int) -> dict[str, float]:
    """Means per scored token, ΔCE and loss recovered from the summed CE/KL."""
    m = {k: v / count for k, v in sums.items()}
    out = dict(m, scored_tokens=count)
    for name in ("sae", "zero", "mean"):
        out[f"delta_ce_{name}"] = m[f"ce_{name}"] - m["ce_orig"]
    for base in ("zero", "mean"):
        gap = m[f"ce_{base}"] - m["ce_orig"]
        out[f"loss_recovered_vs_{base}"] = (m[f"ce_{base}"] - m["ce_sae"]) / gap if gap != 0 else float("nan")
    return out
