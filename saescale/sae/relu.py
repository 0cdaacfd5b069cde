"""ReLU SAE baseline: z = ReLU(W_enc (x_n - b_pre) + b_enc), x̂_n = W_dec^T z + b_pre.

One process only (distributed training is TopK's: see saescale.distributed.mesh.check_layout).

Loss: scale * ||x_n - x̂_n||^2 + lambda * sum_i z_i ||W_dec[i]|| (the L1 penalty
weighted by decoder row norms, equal to plain L1 under the unit-norm constraint
but not gameable by rescaling).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from saescale import losses
from saescale.sae.base import LossContext, SparseAutoencoder, SparseCode, StepOutput, dense_to_code
from saescale.sae.registry import register


@register("relu")
class ReluSAE(SparseAutoencoder):
    """The ReLU + L1 baseline of the paper."""

    def encode_normalized(self, x_n: Tensor) -> SparseCode:
        return dense_to_code(F.relu(self.pre_acts(x_n)))

    def loss_terms(self, x_n: Tensor, ctx: LossContext) -> StepOutput:
        z = F.relu(self.pre_acts(x_n))  # (B, n): a ReLU code is not sparse early in training
        x_hat = z @ self.W_dec + self.b_pre
        mse = losses.scaled_mse(x_hat, x_n, ctx.loss_scale)
        l1 = losses.l1_penalty(z, self.W_dec.norm(dim=-1))
        code = dense_to_code(z.detach())
        return StepOutput(loss=mse + ctx.l1_coef * l1, x_hat=x_hat, code=code, aux_loss=l1.detach())
