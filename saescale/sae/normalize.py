"""Input normalisation of activations, and its inverse.

All SAE errors are measured in the normalised space. Per-token schemes return
the statistics needed to undo them on decode.

- ``layernorm`` (paper):  x_n = (x - mean_c x) / ||x - mean_c x||_2
- ``std`` (released code): x_n = (x - mean_c x) / (std_c x + 1e-5)
- ``mean_sq``:             x_n = s * x, s fixed so that E||x_n||^2 = d
- ``none``:                x_n = x
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

EPS = 1e-5


class NormStats(NamedTuple):
    """Per-token statistics to undo normalisation: x = x_n * scale + shift."""

    shift: Tensor  # (B, 1)
    scale: Tensor  # (B, 1) or scalar


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
    if kind == "layernorm":
        scale = xc.norm(dim=-1, keepdim=True).clamp_min(EPS)
    elif kind == "std":
        scale = xc.std(dim=-1, keepdim=True, unbiased=False) + EPS
    else:
        raise ValueError(f"unknown normalisation {kind!r}")
    return xc / scale, NormStats(mu, scale)


def denormalize(x_n: Tensor, stats: NormStats) -> Tensor:
    """Undo :func:`normalize`: x_n (B, d) -> x (B, d)."""
    return x_n * stats.scale + stats.shift


def estimate_norm_scale(sample: Tensor) -> float:
    """The 'mean_sq' scalar s with E||s x||^2 = d, from a sample (N, d)."""
    msq = sample.double().pow(2).sum(-1).mean().item()
    return float((sample.shape[-1] / max(msq, 1e-30)) ** 0.5)
