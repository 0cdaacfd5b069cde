"""Gated SAE (Rajamanoharan et al. 2024, arXiv 2404.16014).

Two encoder paths share the directions W_enc (n, d); b_enc is the gate bias b_gate, and each latent has
a magnitude scale r_mag (n,) and bias b_mag (n,). With x_c = x_n - b_pre (B, d):

    π_gate = W_enc x_c + b_gate                                  (B, n)
    π_mag  = exp(r_mag) ⊙ (W_enc x_c) + b_mag                    (B, n)
    z      = 1[π_gate > 0] ⊙ ReLU(π_mag)                          (B, n)
    x̂_n   = W_dec^T z + b_pre,   x̂_gate = sg(W_dec)^T ReLU(π_gate) + sg(b_pre)
    loss   = scale ||x_n - x̂_n||^2 / B + λ sum_i ReLU(π_gate)_i ||W_dec[i]|| / B + scale ||x_n - x̂_gate||^2 / B

(λ = TrainConfig.l1_coef; sg = stop-gradient.) The step 1[π_gate > 0] has no gradient: the gate path
is trained by the sparsity penalty and the auxiliary reconstruction through the frozen decoder only,
the magnitude path by the main reconstruction. SAELens' 'gated' names: W_enc, b_gate (our b_enc),
b_mag, r_mag, W_dec, b_dec (our b_pre). Sparse path (:mod:`.sparse_path`): every term lives on the
entries with π_gate > 0, which alone are gathered, decoded and back-propagated. Data-parallel replicas each
give their rows' share of the global batch's loss (B = the global batch); latent sharding is TopK's only
(saescale.distributed.mesh.check_layout).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from saescale import losses
from saescale.kernels import fast_kernels, sparse_decode
from saescale.kernels.encoder import gathered_encode
from saescale.sae.base import LossContext, SparseAutoencoder, SparseCode, StepOutput, dense_to_code
from saescale.sae.registry import register
from saescale.sae.sparse_path import row_entries


def gated_code(gate: Tensor, mag: Tensor) -> Tensor:
    """z = 1[π_gate > 0] ReLU(π_mag), any shape (the step as a constant mask)."""
    return (gate > 0).to(mag.dtype) * F.relu(mag)


@register("gated")
class GatedSAE(SparseAutoencoder):
    """Gated SAE with weight sharing between the gate and magnitude paths."""

    lr_rule = "penalty"  # dense codes early in training: the TopK learning-rate rule kills them
    selection_precisions = ("float32",)  # no top-k selection

    extra_params = ("r_mag", "b_mag")

    def _magnitude(self, gate: Tensor, latents: Tensor | slice) -> Tensor:
        """π_mag = exp(r_mag) (π_gate - b_gate) + b_mag of gate pre-activations ``gate`` of ``latents`` (the
        entries' indices, or all n): the shared W_enc x_c is π_gate less its bias."""
        return (gate - self.b_enc[latents]) * self.r_mag[latents].exp() + self.b_mag[latents]

    def encode_normalized(self, x_n: Tensor) -> SparseCode:
        gate = self.pre_acts(x_n)
        return dense_to_code(gated_code(gate, self._magnitude(gate, slice(None))))

    def loss_terms(self, x_n: Tensor, ctx: LossContext) -> StepOutput:
        """Main reconstruction + λ gate sparsity + auxiliary gate reconstruction; see the module docstring."""
        batch = ctx.batch or x_n.shape[0]
        gate = self.pre_acts(x_n)  # π_gate (B, n): the dense encoder, once; the sparse path reads it without autograd
        entries = row_entries(gate.detach() > 0) if fast_kernels() else None
        norms = self.W_dec.norm(dim=-1)  # (n,)
        if entries is None:  # dense: the reference, and a code that is not sparse yet
            z = gated_code(gate, self._magnitude(gate, slice(None)))
            x_hat = z @ self.W_dec + self.b_pre
            g = F.relu(gate)
            x_gate = g @ self.W_dec.detach() + self.b_pre.detach()
            sparsity = losses.l1_penalty(g, norms)
            code = dense_to_code(z.detach())
        else:
            idx, valid = entries
            gate, _ = gathered_encode(x_n, self.b_pre, self.W_enc, self.b_enc, idx, pre=gate.detach())
            z = gated_code(gate, self._magnitude(gate, idx)) * valid
            g = F.relu(gate) * valid
            x_hat = sparse_decode(self.W_dec, [SparseCode(z, idx)])[0] + self.b_pre
            x_gate = sparse_decode(self.W_dec.detach(), [SparseCode(g, idx)])[0] + self.b_pre.detach()
            sparsity = (g * norms[idx]).sum(-1).mean()
            code = SparseCode(z.detach(), idx)
        if batch != x_n.shape[0]:
            sparsity = sparsity * (x_n.shape[0] / batch)
        mse = losses.scaled_mse(x_hat, x_n, ctx.loss_scale, batch)
        aux = losses.scaled_mse(x_gate, x_n, ctx.loss_scale, batch)
        return StepOutput(loss=mse + ctx.l1_coef * sparsity + aux, x_hat=x_hat, code=code, aux_loss=sparsity.detach())
