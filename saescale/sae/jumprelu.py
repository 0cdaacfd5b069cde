"""JumpReLU SAE (Rajamanoharan et al. 2024, arXiv 2407.14435; the Gemma Scope format).

With pre = W_enc (x_n - b_pre) + b_enc (B, n) and one learned threshold per latent θ = exp(log_threshold) (n,):

    z_i   = pre_i H(pre_i - θ_i)                               (B, n)   H the Heaviside step
    x̂_n  = W_dec^T z + b_pre                                  (B, d)
    loss  = scale ||x_n - x̂_n||^2 / B + λ sum_i H(pre_i - θ_i) / B     (λ = TrainConfig.l0_coef)

H has no useful gradient, so θ learns through straight-through estimators with the rectangle kernel
K(u) = 1[|u| < 1/2] of bandwidth ε (``SAEConfig.bandwidth``), the paper's eqs. (11)-(12):

    ∂ z_i / ∂ θ_i      ≈ -(θ_i / ε) K((pre_i - θ_i) / ε)          ∂ z_i / ∂ pre_i = H(pre_i - θ_i)
    ∂ H(pre_i - θ_i) / ∂ θ_i ≈ -(1 / ε) K((pre_i - θ_i) / ε)      ∂ H / ∂ pre_i = 0

θ is stored as log θ (trained) and initialised to ε; ε defaults to 0.001 times the data's RMS spread
per coordinate (the paper's 0.001 on inputs with E||x||^2 = d). Sparse path (:mod:`.sparse_path`):
only the entries with pre_i > θ_i - ε/2 have a value or a gradient, so they alone are gathered,
decoded and back-propagated. Data-parallel replicas each give their rows' share of the global batch's loss (B
= the global batch); latent sharding is TopK's only (saescale.distributed.mesh.check_layout).
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


def rectangle(u: Tensor) -> Tensor:
    """K(u) = 1[|u| < 1/2] (as u's dtype)."""
    return (u.abs() < 0.5).to(u.dtype)


class JumpReLU(torch.autograd.Function):
    """z = pre H(pre - θ), with ∂z/∂pre = H and the straight-through ∂z/∂θ = -(θ/ε) K((pre - θ)/ε); any
    broadcastable shapes of pre and θ."""

    @staticmethod
    def forward(ctx: FunctionCtx, pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx: FunctionCtx, g: Tensor):
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        d_theta = -(theta / eps) * rectangle((pre - theta) / eps) * g
        return g * (pre > theta), _sum_to(d_theta, theta.shape), None


class Step(torch.autograd.Function):
    """H(pre - θ), with ∂H/∂pre = 0 and the straight-through ∂H/∂θ = -(1/ε) K((pre - θ)/ε)."""

    @staticmethod
    def forward(ctx: FunctionCtx, pre: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: FunctionCtx, g: Tensor):
        pre, theta = ctx.saved_tensors
        d_theta = -(1.0 / ctx.eps) * rectangle((pre - theta) / ctx.eps) * g
        return None, _sum_to(d_theta, theta.shape), None


def _sum_to(t: Tensor, shape: torch.Size) -> Tensor:
    """Sum a broadcast gradient back to ``shape`` (θ (n,) broadcast over the batch)."""
    return t.sum_to_size(shape) if t.shape != shape else t


def jumprelu(pre: Tensor, theta: Tensor, eps: float) -> Tensor:
    """pre H(pre - θ) with the paper's straight-through gradient for θ."""
    return JumpReLU.apply(pre, theta, eps)


def step(pre: Tensor, theta: Tensor, eps: float) -> Tensor:
    """H(pre - θ) with the paper's straight-through gradient for θ (none for pre)."""
    return Step.apply(pre, theta, eps)


@register("jumprelu")
class JumpReLUSAE(SparseAutoencoder):
    """JumpReLU + L0 SAE."""

    lr_rule = "penalty"  # dense codes early in training: the TopK learning-rate rule kills them
    selection_precisions = ("float32",)  # no top-k selection

    extra_params = ("log_threshold",)
    threshold_params = ("log_threshold",)

    @property
    def eps(self) -> float:
        return float(self.cfg.bandwidth)

    @property
    def theta(self) -> Tensor:
        """θ (n,) = exp(log_threshold)."""
        return self.log_threshold.exp()

    @torch.no_grad()
    def init_extra(self, x_n: Tensor) -> None:
        """θ = ε (the paper's initial 0.001 in its units), b_enc = 0."""
        self.log_threshold.fill_(torch.log(torch.tensor(self.eps)).item())

    def encode_normalized(self, x_n: Tensor) -> SparseCode:
        pre = self.pre_acts(x_n)
        return dense_to_code(pre * (pre > self.theta))

    def loss_terms(self, x_n: Tensor, ctx: LossContext) -> StepOutput:
        """Scaled reconstruction error + λ L0; see the module docstring."""
        batch, eps = ctx.batch or x_n.shape[0], self.eps
        theta = self.theta
        pre = self.pre_acts(x_n)  # (B, n): the dense encoder, once; the sparse path reads it without autograd
        entries = row_entries(pre.detach() > theta.detach() - eps / 2) if fast_kernels() else None
        if entries is None:  # dense: the reference, and a code that is not sparse yet
            z = jumprelu(pre, theta, eps)
            x_hat = z @ self.W_dec + self.b_pre
            l0 = step(pre, theta, eps).sum() / batch
            code = dense_to_code(z.detach())
        else:
            idx, valid = entries
            values, _ = gathered_encode(x_n, self.b_pre, self.W_enc, self.b_enc, idx, pre=pre.detach())
            th = theta[idx]
            z = jumprelu(values, th, eps) * valid
            x_hat = sparse_decode(self.W_dec, [SparseCode(z, idx)])[0] + self.b_pre
            l0 = (step(values, th, eps) * valid).sum() / batch
            code = SparseCode(z.detach(), idx)
        mse = losses.scaled_mse(x_hat, x_n, ctx.loss_scale, batch)
        return StepOutput(loss=mse + ctx.l0_coef * l0, x_hat=x_hat, code=code, aux_loss=l0.detach())
