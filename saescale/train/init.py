"""Initialisation: geometric-median pre-bias, tied encoder/decoder, normalisation constants."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from saescale.sae.base import SparseAutoencoder
from saescale.sae.config import SAEConfig
from saescale.sae.normalize import estimate_norm_scale, normalize


def geometric_median(points: Tensor, iters: int = 100, tol: float = 1e-7) -> Tensor:
    """Weiszfeld iterations: argmin_m sum_i ||p_i - m||, points (N, d) -> (d,), in float64."""
    p = points.double()
    m = p.mean(0)
    for _ in range(iters):
        w = 1.0 / (p - m).norm(dim=-1).clamp_min(1e-12)
        new = (w[:, None] * p).sum(0) / w.sum()
        if (new - m).norm() <= tol * max(m.norm().item(), 1.0):
            m = new
            break
        m = new
    return m.to(points.dtype)


def resolve_sae_config(cfg: SAEConfig, sample: Tensor) -> SAEConfig:
    """Fill the data-dependent fields (d, norm_scale) from a raw sample (N, d); returns a new config."""
    d = sample.shape[-1]
    scale = estimate_norm_scale(sample) if cfg.normalize == "mean_sq" else cfg.norm_scale
    return dataclasses.replace(cfg, d=d, norm_scale=scale)


def loss_scale(x_n: Tensor) -> float:
    """1 / E||x_n - E x_n||^2 over a normalised sample (N, d): the fixed main-loss scale."""
    var = (x_n.double() - x_n.double().mean(0)).pow(2).sum(-1).mean().item()
    return 1.0 / max(var, 1e-30)


@torch.no_grad()
def init_sae(sae: SparseAutoencoder, sample: Tensor, generator: torch.Generator) -> float:
    """Tied init on a raw sample (N, d); returns the main-loss scale.

    W_dec rows: uniformly random directions (normalised Gaussians); W_enc = W_dec (tied,
    untied afterwards); b_enc = 0; b_pre = geometric median of the normalised sample.
    """
    n, d = sae.cfg.n, sae.cfg.d
    x_n, _ = normalize(sample.float(), sae.cfg.normalize, sae.cfg.norm_scale)
    W = torch.randn(n, d, generator=generator)
    W /= W.norm(dim=-1, keepdim=True)
    sae.W_dec.copy_(W)
    sae.W_enc.copy_(W)
    sae.b_enc.zero_()
    sae.b_pre.copy_(geometric_median(x_n[:32_768]))
    return loss_scale(x_n)
