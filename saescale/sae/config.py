"""Configuration of one sparse autoencoder (saved as cfg.json next to its weights)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from saescale.errors import SaescaleError

Normalization = Literal["layernorm", "std", "mean_sq", "none"]


@dataclass
class SAEConfig:
    """The SAE's architecture and input normalisation."""

    arch: str = "topk"
    """Architecture name from the registry: 'topk' (the paper's TopK SAE) or 'relu' (ReLU + L1 baseline)."""

    n: int = 4096
    """Number of latents."""

    k: int = 32
    """Active latents per token for TopK (ignored by 'relu')."""

    d: int = 0
    """Input width; 0 = taken from the data."""

    normalize: Normalization = "layernorm"
    """Input normalisation: 'layernorm' (paper: per token subtract the channel mean, scale to unit L2 norm), 'std' (released code: subtract mean, divide by std), 'mean_sq' (one scalar so E||x||^2 = d), 'none'. All errors are measured in the normalised space."""

    norm_scale: float = 1.0
    """Scalar for 'mean_sq' normalisation (x * norm_scale); estimated from a data sample at init."""

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise SaescaleError(f"--n must be positive, got {self.n}")
        if self.d < 0:
            raise SaescaleError(f"--d must be >= 0, got {self.d}")
        if self.arch == "topk" and not 0 < self.k <= self.n:
            raise SaescaleError(f"--k must be in [1, n={self.n}], got {self.k}")
        if not self.norm_scale > 0:
            raise SaescaleError(f"norm_scale must be positive, got {self.norm_scale}")
