"""TopK SAE (Gao et al. 2024): z = ReLU(TopK_k(W_enc (x_n - b_pre) + b_enc)), x̂_n = W_dec^T z + b_pre.

TopK keeps the k largest pre-activations per token and zeros the rest; the loss
is the reconstruction error only (no sparsity penalty). With ``multi_topk`` the
loss is L(k) + L(4k)/8 from the same pre-activations. Dead latents are revived
by the AuxK loss: the residual e = x_n - x̂_n is reconstructed from the top-k_aux
pre-activations among dead latents only, weighted by alpha (1/32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from saescale import losses
from saescale.sae.base import LossContext, SparseAutoencoder, SparseCode
from saescale.sae.registry import register
from saescale.train.step import StepOutput


def topk_code(pre: Tensor, k: int) -> SparseCode:
    """pre (B, n) -> SparseCode of the k largest entries per row, ReLU applied: (B, k)."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return SparseCode(F.relu(values), indices)


def auxk_code(pre: Tensor, dead: Tensor, k_aux: int) -> SparseCode:
    """Top-k_aux pre-activations among dead latents (dead: (n,) bool), ReLU applied."""
    masked = pre.masked_fill(~dead, float("-inf"))
    values, indices = masked.topk(k_aux, dim=-1, sorted=False)
    return SparseCode(F.relu(values), indices)


@register("topk")
class TopKSAE(SparseAutoencoder):
    """The paper's TopK sparse autoencoder."""

    def encode_normalized(self, x_n: Tensor) -> SparseCode:
        """x_n (B, d) -> SparseCode (B, k)."""
        return topk_code(self.pre_acts(x_n), self.cfg.k)

    def encode_k(self, x_n: Tensor, k: int) -> SparseCode:
        """Encode with a different test-time k (progressive codes)."""
        return topk_code(self.pre_acts(x_n), k)

    def loss_terms(self, x_n: Tensor, ctx: LossContext) -> StepOutput:
        pre = self.pre_acts(x_n)  # (B, n)
        code = topk_code(pre, self.cfg.k)
        x_hat = self.decode_normalized(code)
        main = losses.scaled_mse(x_hat, x_n, ctx.loss_scale)
        loss = main
        if ctx.multi_topk:
            k4 = min(4 * self.cfg.k, self.cfg.n)
            x_hat4 = self.decode_normalized(topk_code(pre, k4))
            loss = losses.multi_topk_loss(main, losses.scaled_mse(x_hat4, x_n, ctx.loss_scale))
        n_dead = int(ctx.dead.sum())
        aux = x_n.new_zeros(())
        if n_dead > 0 and ctx.aux_coef > 0:
            acode = auxk_code(pre, ctx.dead, min(ctx.k_aux, n_dead))
            e_hat = F.embedding_bag(acode.indices, self.W_dec, per_sample_weights=acode.values, mode="sum")
            aux = losses.auxk_loss(e_hat, x_n - x_hat)
            loss = loss + ctx.aux_coef * aux
        return StepOutput(loss=loss, x_hat=x_hat, code=code, aux_loss=aux)
