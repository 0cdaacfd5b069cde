"""Fused TopK encoder: chunked matmul + bias + running top-m, backward on the selected pairs only.

Forward, for x_n (B, d), b_pre (d,), W_enc (n, d), b_enc (n,):

    x_c  = x_n - b_pre                                        (B, d)
    pre  = x_c W_enc^T + b_enc      in latent chunks, never whole (B, n)
    top  = top-m of pre per row     values (B, m), indices (B, m)
    aux  = top-k_aux of pre among dead latents               (B, k_aux)

The outputs are the selected *pre-activations* (ReLU is applied by the caller to the
m survivors only). With G the upstream gradient on the selected entries (main and aux
together, E = B (m + k_aux) pairs (b, j)):

    dW_enc[j] = sum_(b,j) G[b, j] x_c[b]   = S @ [x_c; x_c], S the CSR (n, 2B) of G,
                                             main pairs in columns b, AuxK pairs in B + b    (n, d)
    db_enc[j] = sum_(b,j) G[b, j]                                              (n,)
    dx_c[b]   = sum_j G[b, j] W_enc[j]     (gather-sum, ``embedding_bag``)    (B, d)
    dx_n = dx_c,  db_pre = -sum_b dx_c[b] = -db_enc W_enc   (no (B, d) gather when x_n needs none)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from saescale.kernels.csr import codes_csr, rowwise_dots, sparse_matmul
from saescale.kernels.select import DEFAULT_CHUNK, Selection, select_topk
from saescale.threads import one_thread


class FusedTopKEncode(torch.autograd.Function):
    """(x_n, b_pre, W_enc, b_enc) -> Selection of pre-activations; see the module docstring."""

    @staticmethod
    def forward(ctx: FunctionCtx, x_n: Tensor, b_pre: Tensor, W_enc: Tensor, b_enc: Tensor, m: int,
                dead: Tensor | None, k_aux: int, chunk: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x_c = x_n - b_pre
        return FusedTopKEncode.keep(ctx, x_c, W_enc, select_topk(x_c, W_enc, b_enc, m, dead, k_aux, chunk))

    @staticmethod
    def keep(ctx: FunctionCtx, x_c: Tensor, W_enc: Tensor, sel: Selection) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Save what the sparse backward needs of a selection made in ``forward``; its outputs."""
        ctx.save_for_backward(x_c, W_enc, sel.indices, sel.aux_indices)
        ctx.mark_non_differentiable(sel.indices, sel.aux_indices)
        ctx.set_materialize_grads(False)
        return sel.values, sel.indices, sel.aux_values, sel.aux_indices

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, g_top: Tensor | None, _gi: None, g_aux: Tensor | None, _ga: None):
        x_c, W_enc, idx, aux_idx = ctx.saved_tensors
        grads = selected_backward(x_c, W_enc, [(g_top, idx), (g_aux, aux_idx)], ctx.needs_input_grad[:4])
        return (*grads, *[None] * (len(ctx.needs_input_grad) - 4))  # the selection's settings: no gradient


def selected_backward(x_c: Tensor, W_enc: Tensor, pairs: list[tuple[Tensor | None, Tensor]],
                      needs: tuple[bool, ...]) -> tuple[Tensor | None, ...]:
    """Gradients (x_n, b_pre, W_enc, b_enc) of selected pre-activations pre[b, i[b, j]] given the upstream
    gradients G on them, for (G (B, m_s), i (B, m_s)) pairs: see the module docstring."""
    pairs = [(g, i) for g, i in pairs if g is not None and i.shape[1] > 0]
    if not pairs:
        return None, None, None, None
    need_x, need_pre, need_W, need_b = needs
    B, n = x_c.shape[0], W_enc.shape[0]
    with one_thread():  # index bookkeeping on small tensors
        g = torch.cat([p[0] for p in pairs], dim=1)  # (B, E/B)
        i = torch.cat([p[1] for p in pairs], dim=1)
        latents = torch.cat([p[1].reshape(-1) for p in pairs])  # code-major, as codes_csr wants
        values = torch.cat([p[0].reshape(-1) for p in pairs])
        S = codes_csr(latents, values, [p[1].shape[1] for p in pairs], B, n).S if need_W else None
        db = g.new_zeros(n).index_add_(0, latents, values) if need_b or need_pre else None
    dW = sparse_matmul(S, x_c if len(pairs) == 1 else torch.cat([x_c] * len(pairs))) if need_W else None
    dx = F.embedding_bag(i, W_enc, per_sample_weights=g, mode="sum") if need_x else None  # (B, d)
    d_pre = None
    if need_pre:  # -sum_b dx_c[b] = -db W_enc: reads min(n, E) rows of W_enc, not E
        if dx is not None:
            d_pre = -dx.sum(0)
        elif n <= values.numel():
            d_pre = -torch.mv(W_enc.T, db)
        else:
            d_pre = -F.embedding_bag(latents[None], W_enc, per_sample_weights=values[None], mode="sum")[0]
    return dx, d_pre, dW, (db if need_b else None)


class GatheredEncode(torch.autograd.Function):
    """(x_n, b_pre, W_enc, b_enc) -> pre[b, indices[b, j]] (B, m) and pre[b, aux[b, j]] (B, m_aux), with
    pre = (x_n - b_pre) W_enc^T + b_enc, for latents chosen elsewhere (a threshold, a batch-wide top-k),
    and the same sparse backward as :class:`FusedTopKEncode`. The forward values come from, in order:
    ``known`` (the pair of value tensors a selection already computed: returned as they are), ``pre``
    (B, n) (a dense encoder's own, no autograd: gathered), or the dot products per row (``sampled_addmm``:
    no (B, n) matrix)."""

    @staticmethod
    def forward(ctx: FunctionCtx, x_n: Tensor, b_pre: Tensor, W_enc: Tensor, b_enc: Tensor, indices: Tensor,
                aux: Tensor, pre: Tensor | None, known: Tensor | None, known_aux: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        x_c = x_n - b_pre
        with torch.no_grad():
            if known is not None:
                out = known.clone(), known_aux.clone()
            elif pre is not None:
                out = pre.gather(1, indices), pre.gather(1, aux)
            else:
                out = tuple(rowwise_dots(x_c, W_enc, i) + b_enc[i] for i in (indices, aux))
        ctx.save_for_backward(x_c, W_enc, indices, aux)
        ctx.set_materialize_grads(False)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, g: Tensor | None, g_aux: Tensor | None):
        x_c, W_enc, idx, aux = ctx.saved_tensors
        return (*selected_backward(x_c, W_enc, [(g, idx), (g_aux, aux)], ctx.needs_input_grad[:4]),
                None, None, None, None, None)


def gathered_encode(x_n: Tensor, b_pre: Tensor, W_enc: Tensor, b_enc: Tensor, indices: Tensor,
                    aux: Tensor | None = None, pre: Tensor | None = None,
                    known: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Differentiable pre-activations at ``indices`` (B, m) and ``aux`` (B, m_aux; none: (B, 0)); see
    :class:`GatheredEncode` (``known``: the values at indices and aux, already computed)."""
    aux = indices.new_zeros(indices.shape[0], 0) if aux is None else aux
    k_main, k_aux = known if known is not None else (None, None)
    return GatheredEncode.apply(x_n, b_pre, W_enc, b_enc, indices, aux, pre, k_main, k_aux)


def fused_topk_encode(x_n: Tensor, b_pre: Tensor, W_enc: Tensor, b_enc: Tensor, m: int,
                      dead: Tensor | None = None, k_aux: int = 0, chunk: int = DEFAULT_CHUNK) -> Selection:
    """Selected pre-activations (differentiable) and their latent indices; see :class:`FusedTopKEncode`."""
    return Selection(*FusedTopKEncode.apply(x_n, b_pre, W_enc, b_enc, m, dead, k_aux, chunk))
