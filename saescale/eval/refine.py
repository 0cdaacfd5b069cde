"""Refinement: how much do the encoder's activations shrink? (Gao et al. 2024, sec. 5.1)

Freeze the decoder and each token's support S (the latents that fire, z_j > 0:
:func:`saescale.sae.base.fires`) and re-optimise the values, kept non-negative, to minimise the
reconstruction error in the normalised space:

    v* = argmin_{v >= 0} || (x_n - b_pre) - D_S^T v ||^2,     D_S = W_dec[S]   (|S|, d)

by projected gradient descent (batched over tokens, padded supports masked to 0):

    G = D_S D_S^T (k, k),  c = D_S (x_n - b_pre) (k,),  v <- max(0, v - (G v - c) / L),
    L = λ_max(G) (exact for k <= 64; the Gershgorin bound max_j Σ_l |G_jl| for wider ReLU codes)

Reported: activation ratio = Σ v* / Σ z over all active (token, latent) pairs (> 1 means the
encoder shrinks its activations, as the L1 penalty does), nMSE before and after, and the drop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saescale.configs import check_valid, valid
from saescale.sae.base import SparseAutoencoder, SparseCode, fires

GRAM_MAX_N = 8192  # up to this many latents the decoder Gram matrix is formed once and gathered per token


@dataclass(frozen=True)
class RefineConfig:
    """Refinement (shrinkage): the encoder's values re-optimised on its support."""

    tokens: int = valid(4096, ">= 1")
    """Eval tokens re-optimised for the refinement (shrinkage) metric."""

    iters: int = valid(300, ">= 1")
    """Projected-gradient iterations of the refinement."""

    def __post_init__(self) -> None:
        check_valid(self, "refine-")


def refine_values(sae: SparseAutoencoder, x_n: Tensor, code: SparseCode, iters: int,
                  gram: Tensor | None = None) -> Tensor:
    """Refined non-negative values (B, k) on the code's support; x_n (B, d) normalised.

    ``gram`` (n, n) = W_dec W_dec^T may be passed in (float64) to avoid recomputing D_S D_S^T per token.
    """
    active = fires(code.values)  # (B, k): the support S
    mask = active.double()
    D = sae.W_dec[code.indices].double()  # (B, k, d)
    if gram is None:
        G = D @ D.transpose(1, 2)
    else:
        G = gram[code.indices[:, :, None], code.indices[:, None, :]]  # (B, k, k)
    G = G * mask[:, :, None] * mask[:, None, :]  # padded / inactive slots decoupled
    c = (D @ (x_n.double() - sae.b_pre.double())[..., None]).squeeze(-1) * mask  # (B, k)
    L = lipschitz(G)
    v = code.values.double() * mask
    for _ in range(iters):
        v = (v - ((G @ v[..., None]).squeeze(-1) - c) / L).clamp_min(0) * mask
    return v.to(code.values.dtype)


def lipschitz(G: Tensor) -> Tensor:
    """Step bound L >= λ_max(G) per token, (B, 1): exact (eigvalsh) for k <= 64, else the Gershgorin bound."""
    if G.shape[-1] <= 64:
        return torch.linalg.eigvalsh(G)[:, -1].clamp_min(1e-12)[:, None]
    return G.abs().sum(-1).amax(-1).clamp_min(1e-12)[:, None]


@torch.no_grad()
def refinement_metrics(sae: SparseAutoencoder, x: Tensor, cfg: RefineConfig = RefineConfig(),
                       batch: int = 1024) -> dict[str, float]:
    """Refinement figures on the first ``cfg.tokens`` raw activations of x (N, d) (see module docstring; the
    eval contexts are in random order, so these are the tokens of a random sample of contexts)."""
    x = x[: cfg.tokens]
    err0 = err1 = tot = 0.0
    s0 = s1 = 0.0
    mean = sae.normalize(x)[0].double().mean(0)
    n = sae.cfg.n
    gram = sae.W_dec.double() @ sae.W_dec.double().T if n <= GRAM_MAX_N else None  # (n, n), 512 MiB at most
    for xb in x.split(batch):
        x_n, _ = sae.normalize(xb)
        code = sae.encode_normalized(x_n)
        rows = max(1, (1 << 22) // (code.values.shape[1] * max(x_n.shape[1], code.values.shape[1])))  # <= 32 MiB blocks
        v = torch.cat([refine_values(sae, x_n[a : a + rows], SparseCode(code.values[a : a + rows], code.indices[a : a + rows]), cfg.iters, gram)
                       for a in range(0, len(x_n), rows)])
        err0 += (x_n - sae.decode_normalized(code)).double().pow(2).sum().item()
        err1 += (x_n - sae.decode_normalized(SparseCode(v, code.indices))).double().pow(2).sum().item()
        tot += (x_n.double() - mean).pow(2).sum().item()
        s0 += code.values.clamp_min(0).double().sum().item()
        s1 += v.double().sum().item()
    return {"activation_ratio": s1 / s0 if s0 > 0 else float("nan"), "nmse_before": err0 / tot,
            "nmse_after": err1 / tot, "nmse_drop": (err0 - err1) / tot, "tokens": int(x.shape[0])}
