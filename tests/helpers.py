"""Factories shared by the tests."""

from __future__ import annotations

import torch

from saescale.sae.base import SparseAutoencoder
from saescale.sae.config import SAEConfig
from saescale.sae.registry import build_sae
from saescale.train.init import init_sae, resolve_sae_config


def make_sae(arch: str = "topk", n: int = 64, k: int = 4, d: int = 16, normalize: str = "none",
             dtype: torch.dtype = torch.float32, seed: int = 0) -> SparseAutoencoder:
    """A randomly initialised SAE (tied init on a Gaussian sample, random encoder bias to break symmetry)."""
    g = torch.Generator().manual_seed(seed)
    scale = 1.0 if normalize == "mean_sq" else None  # mean_sq's scale, as init would estimate it
    sample = torch.randn(256, d, generator=g)
    sae = build_sae(resolve_sae_config(SAEConfig(arch=arch, n=n, k=k, d=d, normalize=normalize, norm_scale=scale),
                                       sample))
    init_sae(sae, sample, g)
    with torch.no_grad():
        sae.b_enc.copy_(0.1 * torch.randn(n, generator=g))
        sae.W_enc.add_(0.3 * torch.randn(n, d, generator=g))
    return sae.to(dtype)
