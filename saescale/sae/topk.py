"""TopK SAE (Gao et al. 2024): z = ReLU(TopK_k(W_enc (x_n - b_pre) + b_enc)), x̂_n = W_dec^T z + b_pre.

TopK keeps the k largest pre-activations per token and zeros the rest; the loss
is the reconstruction error only (no sparsity penalty). With ``multi_topk`` the
loss is L(k) + L(4k)/8 from the same pre-activations. Dead latents are revived
by the AuxK loss: the residual e = x_n - x̂_n is reconstructed from the top-k_aux
pre-activations among dead latents only, weighted by alpha (1/32).

Two implementations of the same maths: the fast kernels of :mod:`saescale.kernels`
(chunked encoder, never a (B, n) matrix; sparse backward), the default, and the plain
dense reference below (``SAESCALE_KERNELS=reference``), kept for checking.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from saescale import losses
from saescale.kernels import fast_kernels, fused_topk_encode, sparse_decode
from saescale.kernels.select import CUDA_CHUNK, DEFAULT_CHUNK
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

    kernel_chunk: int | None = None  # latents per encoder matmul block in the fast path; None: by device

    def _chunk(self, x: Tensor) -> int:
        if self.kernel_chunk is not None:
            return self.kernel_chunk
        return CUDA_CHUNK if x.is_cuda else DEFAULT_CHUNK

    def encode_normalized(self, x_n: Tensor) -> SparseCode:
        """x_n (B, d) -> SparseCode (B, k)."""
        return self.encode_k(x_n, self.cfg.k)

    def encode_k(self, x_n: Tensor, k: int) -> SparseCode:
        """Encode with a different test-time k (progressive codes)."""
        if not fast_kernels():
            return topk_code(self.pre_acts(x_n), k)
        sel = fused_topk_encode(x_n, self.b_pre, self.W_enc, self.b_enc, min(k, self.cfg.n), chunk=self._chunk(x_n))
        return SparseCode(F.relu(sel.values), sel.indices)

    def loss_terms(self, x_n: Tensor, ctx: LossContext) -> StepOutput:
        """Main (+ Multi-TopK) + alpha * AuxK loss for a normalised batch x_n (B, d)."""
        if fast_kernels():
            return self._loss_terms_fast(x_n, ctx)
        return self._loss_terms_reference(x_n, ctx)

    def _aux_k(self, ctx: LossContext) -> int:
        """Latents used by AuxK this step: min(k_aux, dead count), 0 when AuxK is off."""
        n_dead = int(ctx.dead.sum())
        return min(ctx.k_aux, n_dead) if n_dead > 0 and ctx.aux_coef > 0 else 0

    def _loss_terms_fast(self, x_n: Tensor, ctx: LossContext) -> StepOutput:
        """The fast kernels: one chunked encoder pass selects top-m (m = k or 4k) and the AuxK set."""
        k, n, k_aux = self.cfg.k, self.cfg.n, self._aux_k(ctx)
        m = min(4 * k, n) if ctx.multi_topk else k
        sel = fused_topk_encode(x_n, self.b_pre, self.W_enc, self.b_enc, m,
                                ctx.dead if k_aux else None, k_aux, self._chunk(x_n))
        top = F.relu(sel.values)  # (B, m), sorted descending: the top-k are the first k columns
        code = SparseCode(top[:, :k], sel.indices[:, :k])
        codes = [code]
        if ctx.multi_topk:  # the top-4k code decoded as the top-k code's decoding plus the other 3k latents':
            codes.append(SparseCode(top[:, k:], sel.indices[:, k:]))  # 4k gathered rows a token, not 5k
        if k_aux:
            codes.append(SparseCode(F.relu(sel.aux_values), sel.aux_indices))
        decoded = sparse_decode(self.W_dec, codes)
        x_hat = decoded[0] + self.b_pre
        loss = main = losses.scaled_mse(x_hat, x_n, ctx.loss_scale)
        if ctx.multi_topk:
            loss = losses.multi_topk_loss(main, losses.scaled_mse(x_hat + decoded[1], x_n, ctx.loss_scale))
        aux = x_n.new_zeros(())
        if k_aux:
            aux = losses.auxk_loss(decoded[-1], x_n - x_hat)
            loss = loss + ctx.aux_coef * aux
        return StepOutput(loss=loss, x_hat=x_hat, code=code, aux_loss=aux)

    def _loss_terms_reference(self, x_n: Tensor, ctx: LossContext) -> StepOutput:
        """The plain dense reference: (B, n) pre-activations, ``topk``, autograd through ``embedding_bag``."""
        pre = self.pre_acts(x_n)  # (B, n)
        code = topk_code(pre, self.cfg.k)
        x_hat = self.decode_normalized(code)
        main = losses.scaled_mse(x_hat, x_n, ctx.loss_scale)
        loss = main
        if ctx.multi_topk:
            k4 = min(4 * self.cfg.k, self.cfg.n)
            x_hat4 = self.decode_normalized(topk_code(pre, k4))
            loss = losses.multi_topk_loss(main, losses.scaled_mse(x_hat4, x_n, ctx.loss_scale))
        k_aux = self._aux_k(ctx)
        aux = x_n.new_zeros(())
        if k_aux:
            acode = auxk_code(pre, ctx.dead, k_aux)
            e_hat = F.embedding_bag(acode.indices, self.W_dec, per_sample_weights=acode.values, mode="sum")
            aux = losses.auxk_loss(e_hat, x_n - x_hat)
            loss = loss + ctx.aux_coef * aux
        return StepOutput(loss=loss, x_hat=x_hat, code=code, aux_loss=aux)
