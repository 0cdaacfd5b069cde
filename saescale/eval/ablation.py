"""Ablation sparsity (Gao et al. 2024, sec. 4.5): how sparse is the effect of removing one latent on the logits?

For a sampled latent i and a token position p of a context where it fires (chosen at random
among eval tokens where it fires, z_i > 0 by :func:`saescale.sae.base.fires`, with p <= T - T_h,
so T_h positions of effect fit):

    h'_p  = h_p - z_i W_dec[i] * s_p        (normalised-space contribution mapped to raw space:
                                             s_p is the token's normalisation scale, e.g. its norm;
                                             a transcoder: h is its target module's output, z_i comes
                                             from the source x_p, s_p = 1 / s_y)
    Δ_t   = logits'(t) - logits(t)  for t = p .. p + T_h - 1            (T_h = 16; each (V,))
    v     = concat_t (Δ_t - median_v Δ_t)                                (V * T_h,)
    score = (||v||_1 / ||v||_2)^2 / (V * T_h)                            in (0, 1]; lower = sparser

logits are the unablated model's; logits' come from splicing h' at the hook point. Ablations are
batched (contexts truncated to p + T_h tokens, grouped by length). The reported score is the mean
over ablations with a non-zero effect; ablations with exactly zero effect (e.g. a zero decoder
row) are counted separately.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saescale.configs import check_valid, valid
from saescale.eval import Track, untracked
from saescale.eval.n2g import latent_values
from saescale.eval.splice import Splicer
from saescale.sae.base import SparseAutoencoder, SparseCode, fires


@dataclass(frozen=True)
class AblationConfig:
    """Ablation sparsity: one latent removed at a time."""

    latents: int = valid(200, ">= 1")
    """Latents sampled for ablation sparsity (one ablation each)."""

    horizon: int = valid(16, ">= 1")
    """Positions T over which logit effects are compared (paper: 16)."""

    def __post_init__(self) -> None:
        check_valid(self, "ablation-")


def sparsity_score(delta: Tensor) -> tuple[Tensor, Tensor]:
    """delta (B, T_h, V) logit differences -> (score (B,), ||v||_2 (B,)) after per-position median removal."""
    v = delta - delta.median(dim=-1, keepdim=True).values
    v = v.flatten(1).double()
    l1, l2 = v.abs().sum(-1), v.norm(dim=-1)
    score = (l1 / l2.clamp_min(1e-300)).pow(2) / v.shape[1]
    return torch.where(l2 > 0, score, torch.full_like(score, float("nan"))), l2


def choose_sites(code: SparseCode, n_ctx: int, positions: Tensor, latents: Tensor, max_pos: int,
                 g: torch.Generator) -> list[tuple[int, int, int]]:
    """(latent, context, position) per latent: a random eval token where it fires (:func:`fires`) with
    position <= max_pos."""
    t_kept = len(positions)
    eligible = (positions <= max_pos).repeat(n_ctx)  # (M * T',)
    sites = []
    for i in latents.tolist():
        rows = (fires(latent_values(code, i)) & eligible).nonzero()[:, 0]
        if len(rows):
            r = int(rows[torch.randint(len(rows), (1,), generator=g)])
            sites.append((i, r // t_kept, int(positions[r % t_kept])))
    return sites


@torch.no_grad()
def ablate_batch(splicer: Splicer, sae: SparseAutoencoder, ids: Tensor, sites: list[tuple[int, int]],
                 horizon: int) -> tuple[Tensor, Tensor]:
    """Ablate latent i at position p in each row of ids (B, L); sites [(i, p)] -> (score (B,), ||v||_2 (B,))."""
    logits, h = splicer.forward_with_capture(ids)
    src = h if splicer.last_source is None else splicer.last_source  # a transcoder reads its source hook
    h2 = h.clone()
    for b, (i, p) in enumerate(sites):
        h2[b, p] -= sae.latent_contribution(src[b, p][None], i).to(h.dtype)
    logits2 = splicer.forward_from_hook(ids, h2)
    delta = torch.stack([logits2[b, p : p + horizon] - logits[b, p : p + horizon] for b, (_, p) in enumerate(sites)])
    return sparsity_score(delta)


def ablation_metrics(splicer: Splicer, sae: SparseAutoencoder, tokens: Tensor, code: SparseCode, positions: Tensor,
                     latents: Tensor, cfg: AblationConfig = AblationConfig(), *, batch: int, seed: int,
                     track: Track = untracked) -> dict:
    """Mean ablation-sparsity score over one ablation per latent in ``latents``, ``batch`` ablations per forward
    pass (see module docstring); ``cfg.latents`` is the number the caller samples."""
    g, horizon = torch.Generator().manual_seed(seed), cfg.horizon
    sites = choose_sites(code, len(tokens), positions, latents, tokens.shape[1] - horizon, g)
    sites.sort(key=lambda s: s[2])
    scores, norms = [], []
    for a in track(range(0, len(sites), batch), "ablation", -(-len(sites) // batch)):
        chunk = sites[a : a + batch]
        length = max(p for _, _, p in chunk) + horizon
        ids = tokens[torch.tensor([c for _, c, _ in chunk]), :length]
        s, n = ablate_batch(splicer, sae, ids, [(i, p) for i, _, p in chunk], horizon)
        scores.append(s)
        norms.append(n)
    s = torch.cat(scores) if scores else torch.zeros(0)
    n = torch.cat(norms) if norms else torch.zeros(0)
    live = n > 0
    return {"ablation_sparsity": float(s[live].mean()) if live.any() else float("nan"),
            "ablations": len(sites), "zero_effect": int((~live).sum()), "latents": latents.tolist(),
            "contexts": sorted({c for _, c, _ in sites})}
