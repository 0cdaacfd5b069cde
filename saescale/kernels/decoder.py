"""Sparse decoder for several codes at once: gather-sum forward, CSR / sampled-matmul backward.

For codes s = 1..S, each (values v_s (B, k_s), indices i_s (B, k_s)) over the same W_dec (n, d):

    y_s[b] = sum_j v_s[b, j] W_dec[i_s[b, j]]              (B, d)   (``embedding_bag``)

Backward, with upstream gradients G_s (B, d):

    dW_dec = sum_s S_s^T-rows:  dW_dec[l] = sum_(s,b,j: i_s[b,j]=l) v_s[b, j] G_s[b]
           = S @ [G_1; ...; G_S]   S the CSR (n, S B) of all values       (n, d)
    dv_s[b, j] = G_s[b] . W_dec[i_s[b, j]]   (``sampled_addmm`` on the pattern of S, latent-major
                                              on CPU: each row of W_dec read once; no (B, k, d) gather)

Decoding all codes in one function gives one sparse matmul and one dense (n, d)
gradient, not one per code (at n = 2^20 each is 2.4 GB).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from saescale.kernels.csr import codes_csr, latent_major, latent_major_dots, rowwise_dots, sparse_matmul
from saescale.threads import one_thread


class SparseCode(NamedTuple):
    """A sparse latent code: row b has latents ``indices[b]`` with ``values[b]`` (zeros allowed)."""

    values: Tensor  # (B, k) float
    indices: Tensor  # (B, k) int64

    def to_dense(self, n: int) -> Tensor:
        """(B, n) dense code (for references and small analyses only)."""
        out = self.values.new_zeros(self.values.shape[0], n)
        return out.scatter_add(1, self.indices, self.values)


class SparseDecode(torch.autograd.Function):
    """(W_dec, v_1, i_1, ..., v_S, i_S) -> (y_1, ..., y_S); see the module docstring."""

    @staticmethod
    def forward(ctx: FunctionCtx, W_dec: Tensor, *flat: Tensor) -> tuple[Tensor, ...]:
        values, indices = flat[0::2], flat[1::2]
        ctx.save_for_backward(W_dec, *flat)
        ctx.set_materialize_grads(False)
        return tuple(F.embedding_bag(i, W_dec, per_sample_weights=v, mode="sum") if i.shape[1] else
                     W_dec.new_zeros(i.shape[0], W_dec.shape[1]) for v, i in zip(values, indices))  # empty code: 0

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        W_dec, *flat = ctx.saved_tensors
        values, indices = flat[0::2], flat[1::2]
        live = [s for s, g in enumerate(grads) if g is not None and indices[s].shape[1] > 0]
        need_v = [s for s in live if ctx.needs_input_grad[1 + 2 * s]]
        dW, dv = None, {}
        if live and (ctx.needs_input_grad[0] or need_v):
            G = grads[live[0]] if len(live) == 1 else torch.cat([grads[s] for s in live])  # (S B, d), no lone copy
            with one_thread():  # index bookkeeping on small tensors
                lm = codes_csr(torch.cat([indices[s].reshape(-1) for s in live]),
                               torch.cat([values[s].reshape(-1) for s in live]),
                               [indices[s].shape[1] for s in live], grads[live[0]].shape[0], W_dec.shape[0])
            dW = sparse_matmul(lm.S, G) if ctx.needs_input_grad[0] else None
            if need_v and W_dec.is_cuda:  # the token-major sampled matmul, as verified there
                dv = {s: rowwise_dots(grads[s], W_dec, indices[s]) for s in need_v}
            elif need_v:  # one latent-major sampled matmul for every code, split back per code
                dots = latent_major_dots(lm, W_dec, G).split([indices[s].numel() for s in live])
                dv = {s: d.view_as(indices[s]) for s, d in zip(live, dots)}
        out: list[Tensor | None] = [dW]
        for s in range(len(values)):
            out += [dv.get(s) if s in need_v else None, None]
        return tuple(out)


def sparse_decode(W_dec: Tensor, codes: list[SparseCode]) -> list[Tensor]:
    """Decode each code without bias: [sum_j v[b, j] W_dec[i[b, j]]] -> list of (B, d)."""
    flat = [t for c in codes for t in (c.values, c.indices)]
    return list(SparseDecode.apply(W_dec, *flat))


class PrefixDecode(torch.autograd.Function):
    """Partial decodes by latent group (Matryoshka): (W_dec, bounds, v_1, i_1, ...) -> G outputs (B, d), with

        out[g, b] = sum_(s, j: lo_g <= i_s[b, j] < hi_g) v_s[b, j] W_dec[i_s[b, j]],   [lo_g, hi_g) the g-th group

    of latents cut at ``bounds`` (m_1 < ... < m_G = n). Forward: one ``embedding_bag`` over the entries
    sorted into (group, token) bags. Backward, with G_gb the upstream gradient of bag (g, b), stacked
    (G B, d): dW_dec = S @ G_stack, S the CSR (n, G B) of the values at columns g B + b, and
    dv = W_dec[i] . G_stack[bag] on the same pattern (as :class:`SparseDecode`, one sparse matmul for
    all groups: the G nested reconstructions cost one decode, not G)."""

    @staticmethod
    def forward(ctx: FunctionCtx, W_dec: Tensor, bounds: Tensor, *flat: Tensor) -> tuple[Tensor, ...]:
        values, indices = flat[0::2], flat[1::2]
        B, G = indices[0].shape[0], bounds.numel()
        with one_thread():
            lat = torch.cat([i.reshape(-1) for i in indices])
            val = torch.cat([v.reshape(-1) for v in values])
            rows = torch.cat([torch.arange(B, device=lat.device).repeat_interleave(i.shape[1]) for i in indices])
            bags = torch.searchsorted(bounds, lat, right=True) * B + rows  # (E,) in [0, G B)
            order = torch.sort(bags, stable=True).indices
            offsets = torch.zeros(G * B, dtype=torch.long, device=lat.device)
            torch.cumsum(torch.bincount(bags, minlength=G * B)[:-1], 0, out=offsets[1:])
        out = F.embedding_bag(lat[order], W_dec, offsets, per_sample_weights=val[order], mode="sum")
        ctx.save_for_backward(W_dec, lat, val, bags)
        ctx.shapes = [i.shape for i in indices]
        ctx.set_materialize_grads(False)
        return tuple(out.view(G, B, -1).unbind(0))  # one output per group: no (G, B, d) gradient to zero-fill

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        W_dec, lat, val, bags = ctx.saved_tensors
        none = (None,) * (2 * len(ctx.shapes))
        live = [g for g in grads if g is not None]
        if not live:
            return (None, None, *none)
        G_stack = torch.cat([g if g is not None else torch.zeros_like(live[0]) for g in grads])  # (G B, d)
        with one_thread():
            lm = latent_major(lat, bags, val, W_dec.shape[0], G_stack.shape[0])
        dW = sparse_matmul(lm.S, G_stack) if ctx.needs_input_grad[0] else None
        dv = latent_major_dots(lm, W_dec, G_stack).split([s.numel() for s in ctx.shapes])
        out: list[Tensor | None] = [dW, None]
        for s, d in zip(ctx.shapes, dv):
            out += [d.view(s), None]
        return tuple(out)


def prefix_decode(W_dec: Tensor, codes: list[SparseCode], bounds: Tensor) -> list[Tensor]:
    """Decode the codes (same B tokens) into partial sums by latent group: G tensors (B, d); see :class:`PrefixDecode`."""
    flat = [t for c in codes for t in (c.values, c.indices)]
    return list(PrefixDecode.apply(W_dec, bounds, *flat))
