"""Batch-wide top-k (BatchTopK) over latent chunks, without the (B, n) pre-activation matrix.

BatchTopK keeps the T = B k largest entries of pre = (x_n - b_pre) W_enc^T + b_enc (B, n) over the
whole batch, flattened; a token may keep more or fewer than k. Exact selection from per-row
candidates:

    cand_b  = top-m of row b (the chunked kernel, m = 1.5 k to start: CANDIDATES)
    t       = the T-th largest value of all candidates                 (t <= the true T-th largest t*)
    row b is *saturated* when its m-th candidate >= t and m < n: it may hold more of the top set
    saturated rows get top-2m (same kernel, those rows only); repeat until none is saturated

At the end every row's candidates hold all its entries >= t and t is the T-th largest of the pool,
so t = t* and {entries >= t} is the batch's top-T (ties at t are all kept). Each row's kept entries
are a prefix of its candidates (sorted descending), so the code is trimmed to the widest row.

The passes are :func:`~saescale.kernels.select.select_topk` (the first also AuxK's top-k_aux among dead
latents, from the same chunks); the kept entries of all passes and AuxK's, trimmed to the widest row,
get their gradient through one :func:`~saescale.kernels.encoder.gathered_encode` with the values the
selection computed (no second matmul; one sparse backward over the kept pairs only).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from saescale.kernels.encoder import gathered_encode
from saescale.kernels.select import DEFAULT_CHUNK, select_topk

CANDIDATES = 1.5  # first-pass candidates per row, in units of k (more: a slower selection; fewer: more rows widened)


class BatchSelection(NamedTuple):
    """The batch's top-T entries as padded parts (values are pre-activations, differentiable; ``keep`` marks
    the selected entries of each part, the others are padding)."""

    values: Tensor  # (B, w) first-pass part, sorted descending per row
    indices: Tensor  # (B, w)
    keep: Tensor  # (B, w) bool
    extra_values: Tensor  # (B, e) further entries of rows that held more than the first pass's m (e may be 0)
    extra_indices: Tensor  # (B, e)
    extra_keep: Tensor  # (B, e) bool
    threshold: float  # t, the T-th largest pre-activation of the batch
    aux_values: Tensor  # (B, k_aux) AuxK's top among dead latents (see FusedTopKEncode)
    aux_indices: Tensor  # (B, k_aux)


def kth_largest(values: Tensor, t: int) -> float:
    """The t-th largest entry of ``values`` (any shape, t >= 1); -inf when there are fewer than t."""
    flat = values.reshape(-1)
    if flat.numel() < t:
        return float("-inf")
    return flat.kthvalue(flat.numel() - t + 1).values.item()


class BatchPool:
    """Where the batch's candidates live: in this process (the default), or spread over ``replicas``
    data-parallel processes, which then override :meth:`kth` (the t-th largest over every replica's
    values) and :meth:`any` (whether any replica says yes) with collectives."""

    replicas = 1

    def kth(self, values: Tensor, t: int) -> float:
        return kth_largest(values, t)

    def any(self, flag: bool) -> bool:
        return flag


def batch_topk_encode(x_n: Tensor, b_pre: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, dead: Tensor | None = None,
                      k_aux: int = 0, chunk: int = DEFAULT_CHUNK, pool: "BatchPool | None" = None) -> BatchSelection:
    """The B k largest pre-activations of the batch x_n (B, d); see the module docstring. With ``pool`` (data
    parallelism) x_n is one replica's rows of a global batch and the selection is the global batch's top-T:
    the cut t is taken over every replica's candidates and a replica widens until no replica is saturated."""
    pool = pool or BatchPool()
    B, n = x_n.shape[0], W_enc.shape[0]
    total, m = pool.replicas * B * k, min(n, math.ceil(CANDIDATES * k))
    with torch.no_grad():
        x_c = (x_n - b_pre).detach()
        sel = select_topk(x_c, W_enc.detach(), b_enc.detach(), m, dead, k_aux, chunk)
        first = sel.values
        extra_v, extra_i = first.new_empty(B, 0), sel.indices.new_empty(B, 0)
        t = pool.kth(first, total)
        rows = (first[:, -1] >= t).nonzero()[:, 0] if m < n else first.new_empty(0, dtype=torch.long)
        width = m
        while pool.any(rows.numel() > 0):  # widen the saturated rows, then look again
            if rows.numel():
                width = min(n, 2 * width)
                more = select_topk(x_c[rows], W_enc.detach(), b_enc.detach(), width, chunk=chunk)
                idx = torch.arange(width - m, device=first.device).repeat(B, 1)  # pads: distinct latents
                val = first.new_full((B, width - m), float("-inf"))
                idx[:, : extra_i.shape[1]], val[:, : extra_v.shape[1]] = extra_i, extra_v  # rows widened before
                idx[rows], val[rows] = more.indices[:, m:], more.values[:, m:]
                extra_i, extra_v = idx, val
            t = pool.kth(torch.cat([first, extra_v], 1), total)  # t only rises: a row once unsaturated stays so
            rows = (extra_v[:, -1] >= t).nonzero()[:, 0] if 0 < extra_v.shape[1] and width < n else rows.new_empty(0)
        keep, e_keep = first >= t, extra_v >= t
        w = max(int(keep.sum(1).max()), 1)
        e = int(e_keep.sum(1).max()) if extra_v.shape[1] else 0
        indices = torch.cat([sel.indices[:, :w], extra_i[:, :e]], 1)  # (B, w + e), one set for one backward
        values = torch.cat([first[:, :w], extra_v[:, :e]], 1)
    # the selection's own values, made differentiable with one sparse backward for the code and AuxK
    v, aux_v = gathered_encode(x_n, b_pre, W_enc, b_enc, indices, sel.aux_indices, known=(values, sel.aux_values))
    return BatchSelection(v[:, :w], indices[:, :w], keep[:, :w], v[:, w:], indices[:, w:], e_keep[:, :e], t,
                          aux_v, sel.aux_indices)
