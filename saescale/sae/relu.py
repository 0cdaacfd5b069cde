"""ReLU SAE baseline: z = ReLU(W_enc (x_n - b_pre) + b_enc), x̂_n = W_dec^T z + b_pre.

Loss over a batch of B tokens: scale * ||x_n - x̂_n||^2 / B + lambda * sum_b sum_i z_bi ||W_dec[i]|| / B
(the L1 penalty weighted by decoder row norms, equal to plain L1 under the unit-norm constraint but not
gameable by rescaling). Data-parallel: a replica's B_r rows give its share (B = the global batch), so the
replicas' losses sum to the whole batch's; latent sharding is TopK's only (saescale.distributed.mesh.check_layout).
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

    lr_rule = "penalty"  # dense codes early in training: the TopK learning-rate rule kills them
    selection_precisions = ("float32",)  # no top-k selection

    def encode_normalized(self, x_n: Tensor) -> SparseCode:
        return dense_to_code(F.relu(self.pre_acts(x_n)))

    def loss_terms(self, x_n: Tensor, ctx: LossContext) -> StepOutput:
        z = F.relu(self.pre_acts(x_n))  # (B, n): a ReLU code is not sparse early in training
        x_hat = z @ self.W_dec + self.b_pre
        batch = ctx.batch or x_n.shape[0]
        mse = losses.scaled_mse(x_hat, x_n, ctx.loss_scale, batch)
        l1 = losses.l1_penalty(z, self.W_dec.norm(dim=-1)) * (x_n.shape[0] / batch)
        code = dense_to_code(z.detach())
        return StepOutput(loss=mse + ctx.l1_coef * l1, x_hat=x_hat, code=code, aux_loss=l1.detach())
