"""BatchTopK SAE (Bussmann, Leask, Nanda 2024, arXiv 2412.06410).

Training keeps the B k largest entries of ReLU(pre), pre = W_enc (x_n - b_pre) + b_enc (B, n), over
the whole batch flattened: L0 is k on average while a token may use more or fewer latents.

    S     = top-(B k) positions of pre over (B, n)                        (exact; ties at the cut all kept)
    z     = ReLU(pre) on S, 0 elsewhere                                   (B, n), held sparse
    x̂_n  = W_dec^T z + b_pre
    loss  = scale ||x_n - x̂_n||^2 / B + alpha AuxK            (AuxK exactly as TopK's: saescale.sae.topk)

Inference uses no batch: a JumpReLU with one global threshold θ, z = pre 1[pre > θ]. θ is estimated
during training as a running average of the smallest kept (positive) activation of each batch,
θ <- (1 - r) θ + r min_S z (r = ``SAEConfig.threshold_lr``; the first batch sets θ), and saved as the
``threshold`` tensor (n,), every entry θ: the saved SAE is a JumpReLU SAE (SAELens 'jumprelu').

Fast path: :func:`saescale.kernels.batch_select.batch_topk_encode` (chunked, never a (B, n) matrix;
sparse backward), the sparse decoder; reference (``SAESCALE_KERNELS=reference``): dense pre, a flat
``topk`` over B n entries.

Data parallelism (D replicas, each B_r = B / D rows of the global batch): S is the global batch's top-(B k),
exactly: the cut is the (B k)-th largest of every replica's candidates (:class:`ReplicaPool`), the AuxK
denominator and the threshold's min are taken over the global batch, so the D replicas step as one process
on the whole batch would. Latent sharding is TopK's only (saescale.distributed.mesh.check_layout).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from saescale import losses
from saescale.distributed.collectives import centered_sq_sum
from saescale.distributed.mesh import Mesh
from saescale.distributed.sharded_topk import stable_topk
from saescale.kernels import fast_kernels, sparse_decode
from saescale.kernels.batch_select import BatchPool, batch_topk_encode, kth_largest
from saescale.sae.base import LossContext, SparseAutoencoder, SparseCode, StepOutput, dense_to_code
from saescale.sae.registry import register


class ReplicaPool(BatchPool):
    """The candidates of a batch spread over the data group of ``mesh``: the t-th largest over every
    replica's values (their values all-gathered, padded with -inf to the longest) and a yes from any replica."""

    def __init__(self, mesh: Mesh):
        self.mesh, self.replicas = mesh, mesh.data_shards

    def kth(self, values: Tensor, t: int) -> float:
        flat = values.detach().reshape(-1)
        sizes = self.mesh.all_gather(torch.tensor([flat.numel()], device=flat.device), "data")
        padded = flat.new_full((int(sizes.max()),), float("-inf"))
        padded[: flat.numel()] = flat
        return kth_largest(self.mesh.all_gather(padded, "data"), t)

    def any(self, flag: bool) -> bool:
        return bool(self.mesh.all_reduce(torch.tensor([float(flag)]), "data").item() > 0)


def batch_topk_dense(pre: Tensor, k: int, pool: BatchPool | None = None) -> Tensor:
    """The reference: ReLU(pre) (B, n) on its B k largest entries over the batch, 0 elsewhere. Over a
    ``pool`` of replicas: the entries at or above the global batch's (B k)-th largest (ties all kept)."""
    if pool is not None and pool.replicas > 1:
        z = F.relu(pre)
        total = pool.replicas * pre.shape[0] * k
        t = pool.kth(z.detach().reshape(-1).topk(min(total, z.numel())).values, total)
        return z * (z >= t) * (z > 0)
    flat = F.relu(pre).reshape(-1)
    top = flat.topk(min(k * pre.shape[0], flat.numel())).indices
    mask = torch.zeros_like(flat, dtype=torch.bool).index_fill_(0, top, True)
    return (flat * mask).view_as(pre)


def cat_codes(codes: list[SparseCode]) -> SparseCode:
    """One code (B, sum widths) from several over the same tokens (disjoint latents per token)."""
    if len(codes) == 1:
        return codes[0]
    return SparseCode(torch.cat([c.values for c in codes], 1), torch.cat([c.indices for c in codes], 1))


@register("batchtopk")
class BatchTopKSAE(SparseAutoencoder):
    """BatchTopK SAE, saved with its JumpReLU inference threshold."""

    buffers = ("threshold",)

    def __init__(self, cfg, mesh=None):
        super().__init__(cfg, mesh)
        self._min_kept: float | None = None  # this step's smallest kept activation, for after_step

    def encode_normalized(self, x_n: Tensor) -> SparseCode:
        """Inference: z = pre 1[pre > θ] (the JumpReLU with the saved threshold)."""
        pre = self.pre_acts(x_n)
        return dense_to_code(F.relu(pre) * (pre > self.threshold))

    @torch.no_grad()
    def after_step(self) -> None:
        """θ <- (1 - r) θ + r min kept activation (the first batch sets θ)."""
        if self._min_kept is None:
            return
        r, t = self.cfg.threshold_lr, self._min_kept
        if not bool(self.threshold.any()):
            self.threshold.fill_(t)
        else:
            self.threshold.mul_(1 - r).add_(r * t)
        self._min_kept = None

    def batch_code(self, x_n: Tensor, ctx: LossContext) -> tuple[list[SparseCode], SparseCode | None]:
        """The batch's top-B k code as parts (values differentiable) and AuxK's code (None without AuxK)."""
        k_aux = self.aux_latents(ctx)
        pool = ReplicaPool(self.mesh) if self.mesh.data_shards > 1 else None
        if fast_kernels():
            sel = batch_topk_encode(x_n, self.b_pre, self.W_enc, self.b_enc, self.cfg.k,
                                    ctx.dead if k_aux else None, k_aux, self.chunk_for(x_n), pool)
            parts = [SparseCode(torch.where(sel.keep, F.relu(sel.values), 0.0), sel.indices)]
            if sel.extra_indices.shape[1]:
                parts.append(SparseCode(torch.where(sel.extra_keep, F.relu(sel.extra_values), 0.0), sel.extra_indices))
            aux = SparseCode(F.relu(sel.aux_values), sel.aux_indices) if k_aux else None
            return parts, aux
        pre = self.pre_acts(x_n)  # (B, n): the plain dense reference
        z = batch_topk_dense(pre, self.cfg.k, pool)
        aux = None
        if k_aux:
            v, i = stable_topk(pre.masked_fill(~ctx.dead, float("-inf")), k_aux)
            aux = SparseCode(F.relu(v), i)
        return [dense_code_with_grad(z)], aux

    def _note_min_kept(self, parts: list[SparseCode]) -> None:
        with torch.no_grad():  # the smallest positive value of the parts, without concatenating them
            lows = [torch.where(p.values > 0, p.values, float("inf")).amin() for p in parts if p.values.numel()]
            low = min(v.item() for v in lows) if lows else float("inf")
            if self.mesh.data_shards > 1:  # the global batch's smallest kept activation
                low = self.mesh.all_gather(torch.tensor([low]), "data").min().item()
            self._min_kept = low if low < float("inf") else None

    def reconstruction_loss(self, x_n: Tensor, parts: list[SparseCode], ctx: LossContext, batch: int
                            ) -> tuple[Tensor, Tensor]:
        """(loss, x̂_n) of the code's parts: the scaled error of the one reconstruction."""
        if fast_kernels():
            x_hat = sum(sparse_decode(self.W_dec, parts)) + self.b_pre
        else:  # the reference: z dense (B, n)
            x_hat = sum(p.to_dense(self.cfg.n) for p in parts) @ self.W_dec + self.b_pre
        return losses.scaled_mse(x_hat, x_n, ctx.loss_scale, batch), x_hat

    def loss_terms(self, x_n: Tensor, ctx: LossContext) -> StepOutput:
        """Reconstruction (+ alpha AuxK) of the batch-wide top-B k code; see the module docstring."""
        batch = ctx.batch or x_n.shape[0]
        parts, aux_code = self.batch_code(x_n, ctx)
        self._note_min_kept(parts)
        loss, x_hat = self.reconstruction_loss(x_n, parts, ctx, batch)
        aux = x_n.new_zeros(())
        if aux_code is not None:
            e = x_n - x_hat  # as TopK: target e + sg(b_pre), reconstruction ê + b_pre
            e_hat = sparse_decode(self.W_dec, [aux_code])[0] if fast_kernels() else \
                F.embedding_bag(aux_code.indices, self.W_dec, per_sample_weights=aux_code.values, mode="sum")
            var = None if self.mesh.data_shards == 1 else centered_sq_sum(e, batch, self.mesh)
            aux = losses.auxk_loss(e_hat + self.b_pre, e + self.b_pre.detach(), var)
            loss = loss + ctx.aux_coef * aux
        code = cat_codes([SparseCode(p.values.detach(), p.indices) for p in parts])
        return StepOutput(loss=loss, x_hat=x_hat, code=code, aux_loss=aux)


def dense_code_with_grad(z: Tensor) -> SparseCode:
    """A dense z (B, n) as a SparseCode over all n latents, values differentiable (the reference path)."""
    idx = torch.arange(z.shape[1], device=z.device).expand(z.shape[0], -1)
    return SparseCode(z, idx)
