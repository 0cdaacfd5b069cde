"""One rank's rows of a TopK SAE, and its share of the training loss.

Latent rank l of L holds latents [lo, hi) = [l n_L, (l+1) n_L), n_L = n / L, and b_pre whole:

    W_enc: (n_L, d)   b_enc: (n_L,)   W_dec: (n_L, d)   b_pre: (d,) replicated

One step on this data rank's rows x_n (B_r, d), the same on every rank of the latent group:

    x_c    = copy_to_shards(x_n - b_pre)                   (B_r, d) gradient summed over the group
    cand   = top-c of pre_l = x_c W_enc^T + b_enc           (B_r, c), c = min(m, n_L), m = k (4k Multi-TopK)
    order  = position of each candidate in the exact global top-m (sharded_topk.global_order)
    z_k    = ReLU(cand) where order < k, else 0             this rank's part of the TopK code
    p      = sum_j z_k[:, j] W_dec[cand_j]                   (B_r, d) partial reconstruction
    x̂_n   = sum_over_shards(p) + b_pre                     (B_r, d) the whole reconstruction, every rank
    loss   = mse_share(x̂_n) [+ Multi-TopK share of the 4k code] [+ alpha * auxk_share]

AuxK uses the same scheme on the dead latents: local top-min(k_aux, local dead) candidates,
padded with -inf to k_aux, global top-k_aux, partial decodes summed. All partial decodes go
through one all-reduce, (S, B_r, d) for S codes.

Gradients equal the unsharded model's: W_enc, b_enc, W_dec rows receive exactly the terms of
their own latents; b_pre receives the decoder term (the same on every rank) plus the encoder
terms of all ranks (summed by copy_to_shards). Decoder-row projection and renormalisation
are per row, and Adam is elementwise, so the rest of the step is local.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saescale import losses
from saescale.distributed.collectives import copy_to_shards, sum_over_shards
from saescale.distributed.mesh import Mesh
from saescale.distributed.shares import auxk_share, mse_share
from saescale.distributed.sharded_topk import global_order, pad_candidates, stable_topk
from saescale.kernels import fast_kernels, fused_topk_encode, sparse_decode
from saescale.kernels.select import CUDA_CHUNK, DEFAULT_CHUNK, Selection
from saescale.sae.base import SparseAutoencoder, SparseCode
from saescale.sae.config import SAEConfig

SHARDED = ("W_enc", "b_enc", "W_dec")  # parameters split by latent (rows); b_pre is replicated


class LatentShard(NamedTuple):
    """Latents [lo, hi) of n, shard ``index`` of ``shards`` (n divisible by shards)."""

    n: int
    shards: int
    index: int

    @property
    def size(self) -> int:
        return self.n // self.shards

    @property
    def lo(self) -> int:
        return self.index * self.size

    @property
    def hi(self) -> int:
        return self.lo + self.size


class ShardContext(NamedTuple):
    """What one sharded step needs besides the batch."""

    dead: Tensor  # (n_L,) bool, this shard's latents counted as dead
    k_aux: int  # global AuxK latents this step: min(k_aux, dead over all shards), 0 when off
    aux_coef: float  # alpha of the AuxK loss
    loss_scale: float  # 1 / E||x_n - E x_n||^2 (fixed)
    multi_topk: bool  # add L(4k)/8
    batch: int  # B, the global batch (all data replicas)


class ShardStep(NamedTuple):
    """One rank's forward: its loss share, the whole reconstruction and its part of the code."""

    loss: Tensor  # () this rank's share of the global loss (the same on the latent group)
    x_hat: Tensor  # (B_r, d) whole reconstruction in the normalised space
    values: Tensor  # (B_r, c) this shard's TopK values, 0 where a candidate is not in the global top-k
    indices: Tensor  # (B_r, c) int64 local latent indices (0 .. n_L - 1)
    aux_loss: Tensor  # () this rank's share of the AuxK loss


class ShardedTopK(nn.Module):
    """Rows [shard.lo, shard.hi) of a TopK SAE with config ``cfg`` (the whole SAE's: n is the global n)."""

    arch = "topk"
    # per-row and per-batch helpers of the whole SAE apply unchanged to a shard's rows
    normalize = SparseAutoencoder.normalize
    check_input = SparseAutoencoder.check_input
    project_decoder_grad = SparseAutoencoder.project_decoder_grad
    normalize_decoder = SparseAutoencoder.normalize_decoder

    def __init__(self, cfg: SAEConfig, shard: LatentShard):
        super().__init__()
        self.cfg, self.shard = cfg, shard
        n_l, d = shard.size, cfg.d
        self.W_enc = nn.Parameter(torch.zeros(n_l, d))
        self.b_enc = nn.Parameter(torch.zeros(n_l))
        self.W_dec = nn.Parameter(torch.zeros(n_l, d))
        self.b_pre = nn.Parameter(torch.zeros(d))

    def _select(self, x_c: Tensor, c: int, dead: Tensor, k_aux: int) -> Selection:
        """Local top-c of pre_l (differentiable values, local indices) and top-k_aux among local dead latents."""
        if fast_kernels():
            chunk = CUDA_CHUNK if x_c.is_cuda else DEFAULT_CHUNK
            return fused_topk_encode(x_c, x_c.new_zeros(()), self.W_enc, self.b_enc, c,
                                     dead if k_aux else None, k_aux, chunk)
        pre = F.linear(x_c, self.W_enc, self.b_enc)  # (B_r, n_L): the plain dense reference
        values, indices = stable_topk(pre, c)
        aux_v, aux_i = stable_topk(pre.masked_fill(~dead, float("-inf")), k_aux)
        return Selection(values, indices, aux_v, aux_i)

    def _decode(self, codes: list[SparseCode], x_n: Tensor) -> list[Tensor]:
        """Partial decodes sum_j v[:, j] W_dec[i[:, j]] of this shard's codes, each (B_r, d); zeros for
        an empty code (no local AuxK candidates: this shard has no dead latent)."""
        if fast_kernels():
            return sparse_decode(self.W_dec, codes)  # an empty code decodes to zeros there too
        return [F.embedding_bag(c.indices, self.W_dec, per_sample_weights=c.values, mode="sum")
                if c.indices.shape[1] > 0 else torch.zeros_like(x_n) for c in codes]

    def loss_terms(self, x_n: Tensor, ctx: ShardContext, mesh: Mesh) -> ShardStep:
        """This rank's share of the loss for its rows x_n (B_r, d); see the module docstring."""
        k, n, lo = self.cfg.k, self.cfg.n, self.shard.lo
        m = min(4 * k, n) if ctx.multi_topk else k
        c = min(m, self.shard.size)
        k_aux_local = min(ctx.k_aux, int(ctx.dead.sum())) if ctx.k_aux else 0
        x_c = copy_to_shards(x_n - self.b_pre, mesh)
        sel = self._select(x_c, c, ctx.dead, k_aux_local)
        order = global_order(sel.values, sel.indices + lo, m, mesh)  # (B_r, c)
        top = F.relu(sel.values)
        codes = [SparseCode(torch.where(order < k, top, 0.0), sel.indices)]
        if ctx.multi_topk:
            codes.append(SparseCode(torch.where(order < m, top, 0.0), sel.indices))
        if ctx.k_aux:
            aux_v, aux_i = pad_candidates(sel.aux_values, sel.aux_indices + lo, ctx.k_aux)
            aux_order = global_order(aux_v, aux_i, ctx.k_aux, mesh)[:, :k_aux_local]
            codes.append(SparseCode(torch.where(aux_order < ctx.k_aux, F.relu(sel.aux_values), 0.0), sel.aux_indices))
        decoded = sum_over_shards(torch.stack(self._decode(codes, x_n)), mesh)  # (S, B_r, d)
        x_hat = decoded[0] + self.b_pre
        loss = main = mse_share(x_hat, x_n, ctx.loss_scale, ctx.batch)
        if ctx.multi_topk:
            loss = losses.multi_topk_loss(main, mse_share(decoded[1] + self.b_pre, x_n, ctx.loss_scale, ctx.batch))
        aux = x_n.new_zeros(())
        if ctx.k_aux:
            aux = auxk_share(decoded[-1], x_n - x_hat, ctx.batch, mesh)
            loss = loss + ctx.aux_coef * aux
        return ShardStep(loss, x_hat, codes[0].values, sel.indices, aux)


def row_sharded(key: str) -> bool:
    """Whether a state tensor named ``key`` (as Trainer.state_tensors names them, or a parameter) is
    split by latent rows: the sharded parameters, their Adam moments and EMA, the dead-latent counters."""
    parts = key.split(".")
    return key == "since_fired" or (parts[-1] != "step" and any(p in SHARDED for p in parts))
