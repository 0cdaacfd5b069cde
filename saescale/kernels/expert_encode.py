"""Switch SAE encoder on a batch grouped by expert: one matmul per expert, one top-k, sparse backward.

The B rows of x_n (d,) are in expert order: expert e's tokens are rows [s_e, s_{e+1}) (``bounds``), and
expert e owns latents [e m, (e + 1) m) of W_enc (n, d), b_enc (n,), m = n / E. With x_c = x_n - b_pre:

    P[s_e:s_{e+1}] = x_c[s_e:s_{e+1}] W_enc[e m:(e+1) m]^T + b_enc[e m:(e+1) m]      (B, m), one addmm per expert
    top            = top-k of each row of P, global index e m + column                  (B, k)
    aux            = top-k_aux_e of P among expert e's dead latents, padded to the widest
                     k_aux_e with (value 0, index e m)                                  (B, w)

Every row of P holds only its own expert's latents, so the whole batch's selection is one group-pruned
top-k (:func:`~saescale.kernels.select.top_columns`) over the (B, m) buffer (m = 2048 at n = 16384, E = 8:
1/E of a dense encoder's pre-activations). An expert wider than one chunk, and every expert under a bf16
selection precision (:mod:`saescale.kernels.precision`: its certified or autocast selection, as for TopK),
goes through :func:`~saescale.kernels.select.select_topk` on its own rows instead (at n = 16384, E = 8,
B = 4096 the step takes the same time either way: benchmarks/README.md).

The values are differentiable in (x_n, b_pre, W_enc, b_enc) with the dense encoder's sparse backward
(:func:`~saescale.kernels.encoder.selected_backward`: a CSR matmul over the B (k + w) selected pairs);
padded AuxK entries get gradient 0 from the caller's mask.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from saescale.kernels import precision
from saescale.kernels.encoder import FusedTopKEncode
from saescale.kernels.select import Selection, select_topk, top_columns
from saescale.kernels.workspace import scratch
from saescale.threads import one_thread


@torch.no_grad()
def grouped_topk(x_c: Tensor, W_enc: Tensor, b_enc: Tensor, bounds: list[int], k: int, dead: Tensor | None,
                 widths: list[int], chunk: int) -> Selection:
    """The selection of the module docstring (no autograd): values sorted or not, global indices; ``widths``
    (E,) the per-expert k_aux_e (empty: no AuxK)."""
    E, B = len(bounds) - 1, x_c.shape[0]
    m = W_enc.shape[0] // E
    w = max(widths) if widths else 0
    with one_thread():
        expert = torch.repeat_interleave(torch.arange(E, device=x_c.device),
                                         torch.tensor([bounds[e + 1] - bounds[e] for e in range(E)], device=x_c.device))
        base = (expert * m)[:, None]  # (B, 1) each row's first latent
    if m > chunk or precision.active() != "float32":
        return _chunked(x_c, W_enc, b_enc, bounds, k, dead, widths, chunk, base)
    pre = scratch("switch.pre", (B * m,), x_c.dtype, x_c.device).view(B, m)
    for e in range(E):
        s, t, lo = bounds[e], bounds[e + 1], e * m
        if t > s:
            torch.addmm(b_enc[lo : lo + m], x_c[s:t], W_enc[lo : lo + m].T, out=pre[s:t])
    values, cols = top_columns(pre, k)  # group-pruned top-k, unsorted: the code's order is free (decoders sum it)
    with one_thread():
        indices = cols + base
    if not w:
        return Selection(values, indices, values.new_empty(B, 0), indices.new_empty(B, 0))
    masked = torch.where(dead.view(E, m).index_select(0, expert), pre, float("-inf"))  # (B, m)
    aux_v, aux_c = masked.topk(w, dim=1, sorted=False)
    with one_thread():
        valid = aux_v > float("-inf")  # expert e has widths[e] <= w dead candidates
        return Selection(values, indices, torch.where(valid, aux_v, 0.0), torch.where(valid, aux_c, 0) + base)


def _chunked(x_c: Tensor, W_enc: Tensor, b_enc: Tensor, bounds: list[int], k: int, dead: Tensor | None,
             widths: list[int], chunk: int, base: Tensor) -> Selection:
    """Experts wider than a chunk, or a bf16 precision: :func:`select_topk` on each expert's rows and latents."""
    E, B, m = len(bounds) - 1, x_c.shape[0], W_enc.shape[0] // (len(bounds) - 1)
    w = max(widths) if widths else 0
    values, indices = x_c.new_empty(B, k), base.new_empty(B, k)
    aux_v, aux_i = x_c.new_zeros(B, w), base.expand(B, w).clone()  # pads: value 0, the expert's first latent
    for e in range(E):
        s, t, lo = bounds[e], bounds[e + 1], e * m
        if t == s:
            continue
        ka = widths[e] if w else 0
        sel = select_topk(x_c[s:t], W_enc[lo : lo + m], b_enc[lo : lo + m], k, dead[lo : lo + m] if ka else None,
                          ka, chunk)
        values[s:t], indices[s:t] = sel.values, sel.indices + lo
        if ka:
            aux_v[s:t, :ka], aux_i[s:t, :ka] = sel.aux_values, sel.aux_indices + lo
    return Selection(values, indices, aux_v, aux_i)


class ExpertEncode(FusedTopKEncode):
    """(x_n, b_pre, W_enc, b_enc) -> Selection on a grouped batch; see the module docstring. The sparse backward
    is :class:`~saescale.kernels.encoder.FusedTopKEncode`'s."""

    @staticmethod
    def forward(ctx: FunctionCtx, x_n: Tensor, b_pre: Tensor, W_enc: Tensor, b_enc: Tensor, bounds: list[int],
                k: int, dead: Tensor | None, widths: list[int], chunk: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x_c = x_n - b_pre
        return FusedTopKEncode.keep(ctx, x_c, W_enc, grouped_topk(x_c, W_enc, b_enc, bounds, k, dead, widths, chunk))


def expert_encode(x_n: Tensor, b_pre: Tensor, W_enc: Tensor, b_enc: Tensor, bounds: list[int], k: int,
                  dead: Tensor | None = None, widths: list[int] | None = None, chunk: int = 4096) -> Selection:
    """Differentiable selected pre-activations of a batch grouped by expert; see :class:`ExpertEncode`."""
    return Selection(*ExpertEncode.apply(x_n, b_pre, W_enc, b_enc, bounds, k, dead, widths or [], chunk))
