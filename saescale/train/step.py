"""The record an SAE returns from one training forward pass."""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from saescale.sae.base import SparseCode


class StepOutput(NamedTuple):
    """Outputs of ``SparseAutoencoder.loss_terms`` for a batch of B tokens."""

    loss: Tensor  # () total loss to minimise
    x_hat: Tensor  # (B, d) reconstruction in the normalised space
    code: SparseCode  # (B, k) the main sparse code (zeros allowed)
    aux_loss: Tensor  # () AuxK loss (topk) or L1 penalty (relu), for logging
