"""Configuration of one sparse autoencoder (saved as cfg.json next to its weights)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from saescale.configs import check_valid, valid
from saescale.errors import SaescaleError

Normalization = Literal["layernorm", "std", "mean_sq", "none"]


@dataclass
class SAEConfig:
    """The SAE's architecture and input normalisation."""

    arch: str = "topk"
    """Architecture name from the registry: 'topk' (the paper's TopK SAE) or 'relu' (ReLU + L1 baseline)."""

    n: int = valid(4096, ">= 1")
    """Number of latents."""

    k: int = valid(32, ">= 1")
    """Active latents per token for TopK (ignored by 'relu')."""

    d: int | None = valid(None, ">= 1")
    """Input width; unset (None) = taken from the data."""

    normalize: Normalization = "layernorm"
    """Input normalisation: 'layernorm' (paper: per token subtract the channel mean, scale to unit L2 norm), 'std' (released code: subtract mean, divide by std), 'mean_sq' (one scalar so E||x||^2 = d), 'none'. All errors are measured in the normalised space."""

    norm_scale: float | None = valid(None, "> 0")
    """Scalar s of 'mean_sq' normalisation (x_n = s x); unset (None) = estimated at init from a data sample so that E||x_n||^2 = d. Only for --normalize mean_sq."""

    def __post_init__(self) -> None:
        check_valid(self)
        if self.arch == "topk" and not self.k <= self.n:
            raise SaescaleError(f"--k must be in [1, n={self.n}], got {self.k}")
        if self.norm_scale is not None and self.normalize != "mean_sq":
            raise SaescaleError(f"--norm-scale applies to --normalize mean_sq only, not {self.normalize!r}; drop it")


def upgrade_sae_record(record: dict) -> dict:
    """An SAEConfig record written before unset settings were None (cfg.json, run.json, checkpoints):
    d = 0 meant 'from the data'; norm_scale was 1.0 (unused) for every normalisation but mean_sq."""
    out = dict(record)
    if out.get("d") == 0:
        out["d"] = None
    if out.get("normalize") != "mean_sq" and out.get("norm_scale") == 1.0:
        out["norm_scale"] = None
    return out
