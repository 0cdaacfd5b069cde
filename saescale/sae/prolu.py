"""ProLU SAE (Taggart 2024, "ProLU: a nonlinearity for sparse autoencoders", AI Alignment Forum).

With m = W_enc (x_n - b_pre) (B, n), no bias, and the encoder bias b = b_enc (n,) used as a gate only:

    z_i  = ProLU(m_i, b_i) = m_i 1[m_i > 0 and m_i + b_i > 0]      (B, n)   scale-consistent: b does not shift z
    x̂_n = W_dec^T z + b_pre
    loss = scale ||x_n - x̂_n||^2 / B + λ sum_i z_i ||W_dec[i]|| / B     (λ = TrainConfig.l1_coef)

The true gradient of z with respect to b is zero, so b learns through a synthetic one
(``SAEConfig.prolu_grad``), on the active entries A = 1[m > 0 and m + b > 0]:

    ProLU-STE  (default):  ∂z_i/∂m_i = A_i,  ∂z_i/∂b_i = A_i m_i   (straight through the step of m + b)
    ProLU-ReLU:            ∂z_i/∂m_i = A_i,  ∂z_i/∂b_i = A_i       (the gradient ReLU(m + b) would give)

Taggart reports both as Pareto improvements over ReLU + L1, ProLU-STE the stronger, hence the default.
Sparse path (:mod:`.sparse_path`): only active entries have a value or a gradient. Data-parallel replicas each
give their rows' share of the global batch's loss (B = the global batch); latent sharding is TopK's only
(saescale.distributed.mesh.check_layout).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from saescale import losses
from saescale.kernels import fast_kernels, sparse_decode
from saescale.kernels.encoder import gathered_encode
from saescale.sae.base import LossContext, SparseAutoencoder, SparseCode, StepOutput, dense_to_code
from saescale.sae.registry import register
from saescale.sae.sparse_path import row_entries


class ProLU(torch.autograd.Function):
    """z = m 1[m > 0, m + b > 0] with a synthetic bias gradient ('ste' or 'relu'); b broadcasts over m."""

    @staticmethod
    def forward(ctx: FunctionCtx, m: Tensor, b: Tensor, variant: str) -> Tensor:
        active = (m > 0) & (m + b > 0)
        ctx.save_for_backward(m, active)
        ctx.variant, ctx.b_shape = variant, b.shape
        return m * active

    @staticmethod
    def backward(ctx: FunctionCtx, g: Tensor):
        m, active = ctx.saved_tensors
        g_m = g * active
        g_b = g_m * m if ctx.variant == "ste" else g_m
        return g_m, (g_b.sum_to_size(ctx.b_shape) if g_b.shape != ctx.b_shape else g_b), None


def prolu(m: Tensor, b: Tensor, variant: str = "ste") -> Tensor:
    """ProLU(m, b) with the synthetic bias gradient ``variant``; see the module docstring."""
    return ProLU.apply(m, b, variant)


@register("prolu")
class ProLUSAE(SparseAutoencoder):
    """ProLU + L1 SAE."""

    lr_rule = "penalty"  # dense codes early in training: the TopK learning-rate rule kills them
    selection_precisions = ("float32",)  # no top-k selection

    def encode_normalized(self, x_n: Tensor) -> SparseCode:
        m = torch.nn.functional.linear(x_n - self.b_pre, self.W_enc)
        return dense_to_code(m * ((m > 0) & (m + self.b_enc > 0)))

    def loss_terms(self, x_n: Tensor, ctx: LossContext) -> StepOutput:
        """Scaled reconstruction error + λ L1; see the module docstring."""
        batch, variant = ctx.batch or x_n.shape[0], self.cfg.prolu_grad
        norms = self.W_dec.norm(dim=-1)
        m = torch.nn.functional.linear(x_n - self.b_pre, self.W_enc)  # once; the sparse path reads it without autograd
        with torch.no_grad():
            entries = row_entries((m > 0) & (m + self.b_enc > 0)) if fast_kernels() else None
        if entries is None:  # dense: the reference, and a code that is not sparse yet
            z = prolu(m, self.b_enc, variant)
            x_hat = z @ self.W_dec + self.b_pre
            l1 = losses.l1_penalty(z, norms)
            code = dense_to_code(z.detach())
        else:
            idx, valid = entries
            no_bias = self.b_enc.detach().new_zeros(self.b_enc.shape)  # b enters through ProLU only
            values, _ = gathered_encode(x_n, self.b_pre, self.W_enc, no_bias, idx, pre=m.detach())
            z = prolu(values, self.b_enc[idx], variant) * valid
            x_hat = sparse_decode(self.W_dec, [SparseCode(z, idx)])[0] + self.b_pre
            l1 = (z * norms[idx]).sum(-1).mean()
            code = SparseCode(z.detach(), idx)
        if batch != x_n.shape[0]:
            l1 = l1 * (x_n.shape[0] / batch)
        mse = losses.scaled_mse(x_hat, x_n, ctx.loss_scale, batch)
        return StepOutput(loss=mse + ctx.l1_coef * l1, x_hat=x_hat, code=code, aux_loss=l1.detach())
