"""Synthetic activations from a known sparse dictionary (features in superposition).

    x = sum_{f in S} a_f * F[f] + sigma * eps + c u,    F: (n_features, d) unit rows, n_features > d

Each token has exactly ``k`` active features S, drawn without replacement with
power-law probabilities p_f ∝ (f + 1)^(-alpha); magnitudes a_f ~ U(0.5, 1.5);
eps ~ N(0, I_d); c u is a constant dataset-wide offset of norm c = ``offset`` along a fixed random unit
vector u (real residual streams carry such a mean; 0 by default). Used by tests (recovered-feature score) and ``saescale train --acts synthetic``.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import count
from typing import Iterator

import torch
from torch import Tensor

from saescale.configs import check_valid, valid
from saescale.errors import SaescaleError


@dataclass
class SyntheticConfig:
    """Synthetic activations with a planted dictionary (used with --acts synthetic)."""

    d: int = valid(64, ">= 1")
    """Width d of the synthetic activations."""

    features: int = valid(256, ">= 1")
    """Number of planted feature directions (more than d: superposition)."""

    k: int = valid(8, ">= 1")
    """Active features per token."""

    alpha: float = valid(0.5, ">= 0")
    """Power-law exponent of feature frequencies (0 = all equally frequent)."""

    noise: float = valid(0.01, ">= 0")
    """Standard deviation of isotropic Gaussian noise added to each token."""

    seed: int = valid(1234, ">= 0")
    """Seed of the planted dictionary and of the data stream."""

    offset: float = valid(0.0, ">= 0")
    """Norm of a constant offset added to every token along one fixed random direction (a dataset-wide mean, as real residual streams have); 0 = none."""

    def __post_init__(self) -> None:
        check_valid(self, "synth-")
        if not self.k <= self.features:
            raise SaescaleError(f"--synth-k must be in [1, --synth-features={self.features}]")


class SyntheticSource:
    """A :class:`~saescale.data.source.BatchSource` of planted-dictionary activations."""

    def __init__(self, cfg: SyntheticConfig, stream: int = 0):
        """``stream`` picks an independent token stream over the same dictionary (0: training, 1: held-out)."""
        self.cfg, self.stream = cfg, stream
        self.d = cfg.d
        g = torch.Generator().manual_seed(cfg.seed)
        feats = torch.randn(cfg.features, cfg.d, generator=g)
        self.features = feats / feats.norm(dim=-1, keepdim=True)  # (F, d)
        ranks = torch.arange(1, cfg.features + 1, dtype=torch.float64)
        self.probs = (ranks**-cfg.alpha / (ranks**-cfg.alpha).sum()).float()  # (F,)
        self.log_probs = self.probs.log()
        u = torch.randn(cfg.d, generator=torch.Generator().manual_seed(cfg.seed + 1))  # its own stream: F unchanged
        self.offset = cfg.offset * u / u.norm()  # (d,)

    def batch(self, batch_size: int, index: int) -> Tensor:
        """Batch number ``index`` (B, d): a pure function of (seed, batch_size, index)."""
        c = self.cfg
        g = torch.Generator().manual_seed((c.seed * 1_000_003 + index) * 7 + self.stream + 1)
        # Gumbel top-k: k draws without replacement with probabilities `probs`.
        u = torch.rand(batch_size, c.features, generator=g).clamp_min(1e-20)
        active = (self.log_probs - torch.log(-torch.log(u))).topk(c.k, dim=-1).indices  # (B, k)
        mags = 0.5 + torch.rand(batch_size, c.k, generator=g)
        x = torch.einsum("bk,bkd->bd", mags, self.features[active])
        return x + c.noise * torch.randn(batch_size, c.d, generator=g) + self.offset

    def heldout(self) -> "SyntheticSource":
        """The same planted dictionary, an independent token stream."""
        return SyntheticSource(self.cfg, stream=self.stream + 1)

    def batches(self, batch_size: int, start: int = 0) -> Iterator[Tensor]:
        for i in count(start):
            yield self.batch(batch_size, i)


def feature_recovery(W_dec: Tensor, features: Tensor, threshold: float = 0.9) -> tuple[float, float]:
    """Mean-max cosine and the fraction of planted features recovered.

    For each planted feature (F, d), its best cosine similarity with any decoder
    row (n, d); returns (mean over features, fraction with cosine >= threshold).
    """
    a = W_dec / W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b = features / features.norm(dim=-1, keepdim=True)
    best = (b @ a.T).max(dim=1).values  # (F,)
    return float(best.mean()), float((best >= threshold).float().mean())
