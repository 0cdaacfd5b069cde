"""The sparse path of the dense-encoder architectures (Gated, ProLU, JumpReLU).

Their encoder is dense by nature: every pre-activation (B, n) is needed to know which latents are
active. Their code is sparse, though, so everything after the encoder need not be: the entries that
matter, (B, m) per row (the active ones, and for JumpReLU those near the threshold), are gathered
with :func:`~saescale.kernels.encoder.gathered_encode`, decoded with the sparse decoder, and the
encoder's backward runs on those pairs only (no dense (B, n) gradient, no dense decode).

When the code is not sparse (early in training an L1 or L0 SAE can have most latents active) the
gathered form would cost more than the dense one: above ``DENSE_FRACTION`` of n entries per row the
architectures use their dense path instead, which computes the same thing (tests check both).
"""

from __future__ import annotations

import torch
from torch import Tensor

DENSE_FRACTION = 0.25  # use the dense path when the widest row has more than this fraction of n entries


@torch.no_grad()
def row_entries(mask: Tensor, dense_fraction: float | None = None) -> tuple[Tensor, Tensor] | None:
    """The True entries of each row of ``mask`` (B, n) as (indices (B, m), valid (B, m) bool), m the widest
    row's count (at least 1), rows padded with valid False (slot j padded with latent j: pads never repeat
    one another); None when m > dense_fraction n (default :data:`DENSE_FRACTION`)."""
    B, n = mask.shape
    dense_fraction = DENSE_FRACTION if dense_fraction is None else dense_fraction
    counts = mask.sum(1)
    m = max(int(counts.max()) if B else 0, 1)
    if m > dense_fraction * n:
        return None
    rows, cols = mask.nonzero(as_tuple=True)  # row-major
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(rows.numel(), device=mask.device) - starts[rows]
    indices = torch.arange(m, device=mask.device).repeat(B, 1)
    valid = torch.zeros(B, m, dtype=torch.bool, device=mask.device)
    indices[rows, pos] = cols
    valid[rows, pos] = True
    return indices, valid
