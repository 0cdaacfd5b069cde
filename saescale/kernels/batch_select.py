"""Batch-wide top-k (BatchTopK) over latent chunks, without the (B, n) pre-activation matrix.

BatchTopK keeps the T = B k largest entries of pre = (x_n - b_pre) W_enc^T + b_enc (B, n) over the
whole batch, flattened; a token may keep more or fewer than k. Exact selection from per-row
candidates:

    cand_b  = top-m of row b (the chunked kernel, m = CANDIDATES k to start)
    t       = the T-th largest value of all candidates                 (t <= the true T-th largest t*)
    row b is *saturated* when its m-th candidate >= t and m < n: it may hold more of the top set
    saturated rows get top-2m (same kernel, those rows only); repeat until none is saturated

At the end every row's candidates hold all its entries >= t and t is the T-th largest of the pool,
so t = t* and {entries >= t} is the batch's top-T (ties at t are all kept). Each row's kept entries
are a prefix of its candidates (sorted descending), so the code is trimmed to the widest row.

The first pass is :class:`~saescale.kernels.encoder.FusedTopKEncode` (differentiable values, sparse
backward, and AuxK's top-k_aux among dead latents from the same chunks); the extra candidates of
saturated rows are recomputed differentiably by :func:`~saescale.kernels.encoder.gathered_encode`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from saescale.kernels.encoder import fused_topk_encode, gathered_encode
from saescale.kernels.select import DEFAULT_CHUNK, select_topk

CANDIDATES = 2  # first-pass candidates per row, in units of k


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
    """The t-th largest entry of ``values`` (any shape, t >= 1)."""
    flat = values.reshape(-1)
    return flat.kthvalue(flat.numel() - t + 1).values.item()


def batch_topk_encode(x_n: Tensor, b_pre: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, dead: Tensor | None = None,
                      k_aux: int = 0, chunk: int = DEFAULT_CHUNK) -> BatchSelection:
    """The B k largest pre-activations of the batch x_n (B, d); see the module docstring."""
    B, n = x_n.shape[0], W_enc.shape[0]
    total, m = B * k, min(n, CANDIDATES * k)
    sel = fused_topk_encode(x_n, b_pre, W_enc, b_enc, m, dead, k_aux, chunk)
    first = sel.values.detach()
    extra_v, extra_i = first.new_empty(B, 0), sel.indices.new_empty(B, 0)
    with torch.no_grad():
        pool = first
        t = kth_largest(pool, total)
        rows = (first[:, -1] >= t).nonzero()[:, 0] if m < n else first.new_empty(0, dtype=torch.long)
        width, x_c = m, None
        while rows.numel():  # widen the saturated rows, then look again
            width = min(n, 2 * width)
            x_c = (x_n - b_pre).detach() if x_c is None else x_c
            more = select_topk(x_c[rows], W_enc.detach(), b_enc.detach(), width, chunk=chunk)
            idx = torch.arange(width - m, device=first.device).repeat(B, 1)  # pads: distinct latents
            val = first.new_full((B, width - m), float("-inf"))
            idx[:, : extra_i.shape[1]], val[:, : extra_v.shape[1]] = extra_i, extra_v  # rows widened before
            idx[rows], val[rows] = more.indices[:, m:], more.values[:, m:]
            extra_i, extra_v = idx, val
            t = kth_largest(torch.cat([first, val], 1), total)
            rows = (val[:, -1] >= t).nonzero()[:, 0] if width < n else rows.new_empty(0)
    keep = first >= t
    w = max(int(keep.sum(1).max()), 1)
    e_keep = extra_v >= t
    e = int(e_keep.sum(1).max()) if extra_v.shape[1] else 0
    extra_i, e_keep = extra_i[:, :e], e_keep[:, :e]
    if e:  # the saturated rows' further entries, differentiable
        extra_v, _ = gathered_encode(x_n, b_pre, W_enc, b_enc, extra_i)
    else:
        extra_v = first.new_empty(B, 0)
    return BatchSelection(sel.values[:, :w], sel.indices[:, :w], keep[:, :w], extra_v, extra_i, e_keep, t,
                          sel.aux_values, sel.aux_indices)
