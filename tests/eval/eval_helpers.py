"""Factories for the eval tests: exact SAEs and SAE folders that point at a model."""

from __future__ import annotations

from pathlib import Path

import torch

from saescale.sae.base import SparseAutoencoder
from saescale.sae.config import SAEConfig
from saescale.sae.io import save_sae
from saescale.sae.registry import build_sae


def identity_sae(d: int, k: int = 0) -> SparseAutoencoder:
    """TopK SAE with n = 2d, k = 2d, W_enc = W_dec = [I; -I], normalize none: x̂ = relu(x) - relu(-x) = x exactly.

    With a smaller ``k`` the code keeps the k largest |x_j| (an exact TopK-by-magnitude code).
    """
    sae = build_sae(SAEConfig(arch="topk", n=2 * d, k=k or 2 * d, d=d, normalize="none"))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye]))
        sae.W_dec.copy_(torch.cat([eye, -eye]))
    return sae


def save_for_model(sae: SparseAutoencoder, folder: Path, model: str, **acts) -> Path:
    """Save ``sae`` with provenance saying it was trained on ``model`` (default corpus, default hook unless given)."""
    return save_sae(sae, folder, extra={"source": "cache", "activations": {"model": model, **acts}})

