"""Reconstruction metrics on held-out activations: nMSE, FVU, L0, dead and dense latents.

Over N eval tokens (normalised space, x_n and x̂_n (N, d)):

    nMSE = sum ||x_n - x̂_n||^2 / sum ||x_n - mean(x_n)||^2     (mean over the eval set)
    L0   = mean number of non-zero latents per token
    dead = fraction of latents that never fire on the eval tokens
    dense = fraction of latents firing on more than 10% of the eval tokens
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from saescale.sae.base import SparseAutoencoder


@torch.no_grad()
def reconstruction_metrics(sae: SparseAutoencoder, batches: Iterable[Tensor], k: int | None = None) -> dict[str, float]:
    """Stream raw batches (B, d) through the SAE; sums are float64 so the result is exact to the order of summation.

    ``k`` overrides the TopK k at test time (progressive codes).
    """
    n = sae.cfg.n
    err = sq = 0.0
    s = torch.zeros(sae.cfg.d, dtype=torch.float64)
    fires = torch.zeros(n, dtype=torch.float64)
    tokens = nnz = 0
    for x in batches:
        x_n, _ = sae.normalize(x.float())
        code = sae.encode_k(x_n, k) if k is not None and hasattr(sae, "encode_k") else sae.encode_normalized(x_n)
        x_hat = sae.decode_normalized(code)
        err += (x_n - x_hat).double().pow(2).sum().item()
        sq += x_n.double().pow(2).sum().item()
        s += x_n.double().sum(0)
        active = code.values > 0
        nnz += int(active.sum())
        fires.index_add_(0, code.indices[active], torch.ones(int(active.sum()), dtype=torch.float64))
        tokens += x.shape[0]
    total_var = sq - s.pow(2).sum().item() / tokens
    freq = fires / tokens
    return {
        "nmse": err / total_var,
        "fvu": err / total_var,
        "l0": nnz / tokens,
        "dead_frac": float((fires == 0).double().mean()),
        "dense_frac": float((freq > 0.1).double().mean()),
        "tokens": tokens,
    }
