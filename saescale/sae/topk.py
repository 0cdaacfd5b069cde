"""TopK SAE (Gao et al. 2024): z = ReLU(TopK_k(W_enc (x_n - b_pre) + b_enc)), x̂_n = W_dec^T z + b_pre.

TopK keeps the k largest pre-activations per token and zeros the rest; the loss is the
reconstruction error only (no sparsity penalty). With ``multi_topk`` the loss is
L(k) + L(4k)/8 from the same pre-activations. Dead latents are revived by the AuxK loss:
the residual e = x_n - x̂_n is reconstructed from the top-k_aux pre-activations among dead
latents only, weighted by alpha (1/32). As in the released code, the AuxK reconstruction
carries b_pre and its target is e + b_pre with both e and that b_pre detached:

    L_aux = ||(e + sg(b_pre)) - (W_dec^T z_aux + b_pre)||^2 / V  =  ||e - ê||^2 / V   in value,

so b_pre receives the AuxK gradient -2 alpha (e - ê) / V (per token) besides the main loss's.

The loss is written once, for any mesh (one process is a one-rank mesh). One step on this
rank's rows x_n (B_r, d) and latents [lo, hi), m = k (4k with Multi-TopK), c = min(m, n_L):

    b      = copy_to_shards(b_pre)                  encoder's b_pre gradient summed over the latent group
    cand   = top-c of pre_l = W_enc_l (x_n - b) + b_enc_l              (B_r, c)   values, local indices
    order  = each candidate's position in the exact global top-m        (sharded_topk.global_order;
                                                                         in one shard: the candidates' own)
    z_k    = ReLU(cand) where order < k, else 0;  z_rest where k <= order < m (Multi-TopK)
    p_s    = sum_j z_s[:, j] W_dec[cand_j]          partial decode of each code s        (B_r, d)
    x̂_n   = sum_over_shards(p_k) + b_pre,  x̂_4k = x̂_n + sum_over_shards(p_rest)
    loss   = scaled_mse(x̂_n) [+ scaled_mse(x̂_4k) / 8] [+ alpha * auxk_loss(ê, x_n - x̂_n)]

over the global batch B (data-parallel ranks' losses sum to it; AuxK's denominator is the
global batch's). AuxK uses the same scheme on the dead latents: local top-min(k_aux, local
dead) candidates, padded to k_aux, global top-k_aux. Gradients equal the unsharded model's:
W_enc, b_enc, W_dec rows receive exactly the terms of their own latents; b_pre the decoder
term plus the encoder terms of all shards.

Two implementations of the selection and decoding: the fast kernels of :mod:`saescale.kernels`
(chunked encoder, never a (B, n) matrix; sparse backward), the default, and the plain dense
reference (``SAESCALE_KERNELS=reference``: (B, n_L) pre-activations, ``sort``, ``embedding_bag``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from saescale import losses
from saescale.distributed.collectives import centered_sq_sum, copy_to_shards, sum_over_shards
from saescale.distributed.sharded_topk import global_order, pad_candidates, stable_topk
from saescale.kernels import fast_kernels, fused_topk_encode, sparse_decode
from saescale.kernels.select import Selection
from saescale.sae.base import LossContext, SparseAutoencoder, SparseCode, StepOutput
from saescale.sae.registry import register


def topk_code(pre: Tensor, k: int) -> SparseCode:
    """pre (B, n) -> SparseCode of the k largest entries per row, ReLU applied: (B, k)."""
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return SparseCode(F.relu(values), indices)


@register("topk")
class TopKSAE(SparseAutoencoder):
    """The paper's TopK sparse autoencoder."""

    def encode_normalized(self, x_n: Tensor) -> SparseCode:
        """x_n (B, d) -> SparseCode (B, k)."""
        return self.encode_k(x_n, self.cfg.k)

    def encode_k(self, x_n: Tensor, k: int) -> SparseCode:
        """Encode with a different test-time k (progressive codes); a whole SAE (one shard) only."""
        if not fast_kernels():
            return topk_code(self.pre_acts(x_n), k)
        sel = fused_topk_encode(x_n, self.b_pre, self.W_enc, self.b_enc, min(k, self.cfg.n), chunk=self.chunk_for(x_n))
        return SparseCode(F.relu(sel.values), sel.indices)

    def _select(self, x_n: Tensor, c: int, dead: Tensor, k_aux: int) -> Selection:
        """This shard's top-c pre-activations (differentiable values, local indices) and top-k_aux among its dead latents."""
        b_pre = copy_to_shards(self.b_pre, self.mesh)
        if fast_kernels():
            return fused_topk_encode(x_n, b_pre, self.W_enc, self.b_enc, c, dead if k_aux else None, k_aux,
                                     self.chunk_for(x_n))
        pre = F.linear(x_n - b_pre, self.W_enc, self.b_enc)  # (B_r, n_L): the plain dense reference
        aux = stable_topk(pre.masked_fill(~dead, float("-inf")), k_aux)
        return Selection(*stable_topk(pre, c), *aux)

    def _decode(self, codes: list[SparseCode]) -> list[Tensor]:
        """Partial decodes sum_j v[:, j] W_dec[i[:, j]], each (B_r, d), summed over the latent group;
        zeros for an empty code (no local AuxK candidate: this shard has no dead latent)."""
        if fast_kernels():
            parts = sparse_decode(self.W_dec, codes)
        else:
            parts = [F.embedding_bag(c.indices, self.W_dec, per_sample_weights=c.values, mode="sum")
                     if c.indices.shape[1] else self.W_dec.new_zeros(c.indices.shape[0], self.cfg.d) for c in codes]
        if self.mesh.latent_shards == 1:
            return parts
        return list(sum_over_shards(torch.stack(parts), self.mesh).unbind())  # one all-reduce for all codes

    def _codes(self, sel: Selection, k: int, m: int, multi: bool) -> list[SparseCode]:
        """The top-k code [and the other m - k latents of the top-m] among this shard's candidates."""
        top = F.relu(sel.values)
        if self.mesh.latent_shards == 1:  # the candidates are the selection, sorted descending: slices
            return [SparseCode(top[:, :k], sel.indices[:, :k])] + (
                [SparseCode(top[:, k:], sel.indices[:, k:])] if multi else [])
        order = global_order(sel.values, sel.indices + self.shard.lo, m, self.mesh)  # (B_r, c)
        codes = [SparseCode(torch.where(order < k, top, 0.0), sel.indices)]
        if multi:
            codes.append(SparseCode(torch.where((order >= k) & (order < m), top, 0.0), sel.indices))
        return codes

    def _aux_code(self, sel: Selection, k_aux: int) -> SparseCode:
        """This shard's part of the global top-k_aux among dead latents."""
        top = F.relu(sel.aux_values)
        if self.mesh.latent_shards == 1:
            return SparseCode(top, sel.aux_indices)
        v, i = pad_candidates(sel.aux_values, sel.aux_indices + self.shard.lo, k_aux)
        order = global_order(v, i, k_aux, self.mesh)[:, : sel.aux_values.shape[1]]
        return SparseCode(torch.where(order < k_aux, top, 0.0), sel.aux_indices)

    def loss_terms(self, x_n: Tensor, ctx: LossContext) -> StepOutput:
        """Main (+ Multi-TopK) + alpha * AuxK loss for this rank's normalised rows x_n (B_r, d); see the module docstring."""
        k, n, mesh = self.cfg.k, self.cfg.n, self.mesh
        m = min(4 * k, n) if ctx.multi_topk else k
        k_aux = self.aux_latents(ctx)
        sel = self._select(x_n, min(m, self.shard.size), ctx.dead, min(k_aux, int(ctx.dead.sum())))
        codes = self._codes(sel, k, m, ctx.multi_topk)
        if k_aux:
            codes.append(self._aux_code(sel, k_aux))
        decoded = self._decode(codes)
        x_hat = decoded[0] + self.b_pre
        batch = ctx.batch or x_n.shape[0]
        loss = main = losses.scaled_mse(x_hat, x_n, ctx.loss_scale, batch)
        if ctx.multi_topk:
            loss = losses.multi_topk_loss(main, losses.scaled_mse(x_hat + decoded[1], x_n, ctx.loss_scale, batch))
        aux = x_n.new_zeros(())
        if k_aux:
            e = x_n - x_hat  # the target e + sg(b_pre) and the reconstruction ê + b_pre: b_pre's AuxK gradient
            var = None if mesh.data_shards == 1 else centered_sq_sum(e, batch, mesh)
            aux = losses.auxk_loss(decoded[-1] + self.b_pre, e + self.b_pre.detach(), var)
            loss = loss + ctx.aux_coef * aux
        return StepOutput(loss=loss, x_hat=x_hat, code=codes[0], aux_loss=aux)
