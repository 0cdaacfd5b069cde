"""Input normalisation of activations, and its inverse.

All SAE errors are measured in the normalised space. Per-token schemes return the statistics
needed to undo them on decode. For a batch x (B, d), with per token μ = mean_c x (B, 1),
x_c = x - μ (B, d), ε = 1e-5 and c = √(d - 1):

- ``layernorm`` (paper):   x_n = x_c / max(‖x_c‖₂ + c ε, ε)                 undone by x = x_n ‖x_c‖₂ + μ
- ``std`` (released code): x_n = x_c / (σ + ε), σ = ‖x_c‖₂ / c              undone by x = x_n σ + μ
- ``mean_sq``:             x_n = s x, s fixed so that E‖x_n‖² = d            undone by x = x_n / s
- ``none``:                x_n = x

``std`` is exactly OpenAI's released ``LN`` (``sparse_autoencoder/model.py``: σ the *unbiased*
standard deviation, torch's default ``x.std(dim=-1)``, ε outside the square root; decode multiplies
by σ, not σ + ε) and SAELens's ``normalize_activations="layer_norm"``. ``layernorm`` is the paper's
unit-norm scaling with the same ε, chosen so that it is ``std`` divided by the constant c:

    x_n(layernorm) = x_n(std) / c      (B, d),   and both decode with the same ‖x_c‖₂ = c σ,

so an SAE trained on ``layernorm`` is exactly a SAELens ``layer_norm`` SAE with c folded into its
weights (:mod:`saescale.sae.formats.saelens`). For d = 1 (x_c = 0) the divisor is clamped at ε.
The scale in :class:`NormStats` is the decode multiplier (‖x_c‖₂ or σ), which differs from the
divisor by the ε term, as in the released code.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from torch import Tensor

EPS = 1e-5


class NormStats(NamedTuple):
    """Per-token statistics to undo normalisation: x = x_n * scale + shift."""

    shift: Tensor  # (B, 1)
    scale: Tensor  # (B, 1) or scalar


def ln_constant(d: int) -> float:
    """c = √(d - 1): 'std' normalisation's x_n is c times 'layernorm''s (see the module docstring)."""
    return math.sqrt(max(d - 1, 0))


def normalize(x: Tensor, kind: str, norm_scale: float | None = None) -> tuple[Tensor, NormStats]:
    """Normalise x (B, d) -> (x_n (B, d), stats)."""
    if kind == "none":
        return x, NormStats(x.new_zeros(()), x.new_ones(()))
    if kind == "mean_sq":
        if norm_scale is None:
            raise ValueError("'mean_sq' normalisation needs its scale (estimated at init)")
        return x * norm_scale, NormStats(x.new_zeros(()), x.new_tensor(1.0 / norm_scale))
    mu = x.mean(dim=-1, keepdim=True)
    xc = x - mu
    d = x.shape[-1]
    if kind == "layernorm":
        norm = xc.norm(dim=-1, keepdim=True)  # (B, 1) = c σ
        return xc / (norm + ln_constant(d) * EPS).clamp_min(EPS), NormStats(mu, norm)
    if kind == "std":
        sigma = xc.std(dim=-1, keepdim=True) if d > 1 else xc.abs()  # unbiased, as torch's default (d = 1: 0)
        return xc / (sigma + EPS), NormStats(mu, sigma)
    raise ValueError(f"unknown normalisation {kind!r}")


def denormalize(x_n: Tensor, stats: NormStats) -> Tensor:
    """Undo :func:`normalize`: x_n (B, d) -> x (B, d)."""
    return x_n * stats.scale + stats.shift


def estimate_norm_scale(sample: Tensor) -> float:
    """The 'mean_sq' scalar s with E||s x||^2 = d, from a sample (N, d)."""
    msq = sample.double().pow(2).sum(-1).mean().item()
    return float((sample.shape[-1] / max(msq, 1e-30)) ** 0.5)
