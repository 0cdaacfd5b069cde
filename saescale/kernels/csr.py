"""Sparse (CSR) matrices built from top-k index sets, for the kernels' backward passes.

A set of (row b, latent j, value v) triplets from B tokens over n latents is turned into
the latent-major CSR matrix S (n, C) with S[j, c] = v (duplicates add), so that
``S @ Y`` for a dense Y (C, d) is the index-add  out[j] += v * Y[c]  done by MKL's sparse
matmul (~25 ms for B k = 131k entries at d = 576, against ~140 ms for ``index_add_``).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from saescale.kernels.workspace import take
from saescale.threads import one_thread


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """``torch.sparse_csr_tensor`` without invariant checks and without its 'beta' warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


def stable_argsort(keys: Tensor) -> Tensor:
    """Stable argsort of a flat int64 tensor. On CPU on one thread: ~2 ms for 131k keys, where
    two threads measured 6-290 ms on a loaded 2-core machine and NumPy's stable sort ~10 ms."""
    with one_thread():
        return torch.sort(keys, stable=True).indices


class LatentMajor(NamedTuple):
    """A latent-major CSR and where its entries came from."""

    S: Tensor  # CSR (n, n_cols)
    order: Tensor  # (E,) int64: entry e of S (in CSR order) is input entry order[e]


def latent_major(latents: Tensor, cols: Tensor, values: Tensor, n: int, n_cols: int) -> LatentMajor:
    """CSR (n, n_cols) with S[latents[e], cols[e]] += values[e]; inputs are flat (E,).

    Entries are sorted by latent with a stable sort, so within a latent row the
    columns keep their input order (increasing when the input is token-major).
    """
    order = stable_argsort(latents)
    crow = torch.zeros(n + 1, dtype=torch.long, device=latents.device)
    torch.cumsum(torch.bincount(latents, minlength=n), 0, out=crow[1:])
    return LatentMajor(_csr(crow, cols[order], values[order], (n, n_cols)), order)


def codes_csr(latents: Tensor, values: Tensor, widths: list[int], B: int, n: int) -> LatentMajor:
    """The latent-major CSR (n, S B) of S codes over the same B tokens, from their entries flattened
    code-major (code s is (B, widths[s]), row-major): code s's entries go to columns s B .. s B + B - 1,
    S[i_s[b, j], s B + b] = v_s[b, j], so no (latent, column) pair repeats (cuSPARSE requires it, and a
    latent can be in two codes of one token)."""
    cols = torch.cat([torch.arange(B, device=latents.device).repeat_interleave(w) + s * B
                      for s, w in enumerate(widths)])
    return latent_major(latents, cols, values, n, B * len(widths))


def latent_major_dots(lm: LatentMajor, W: Tensor, Y: Tensor) -> Tensor:
    """out[e] = W[latents[e]] . Y[cols[e]] for every entry e of ``lm``, in input order: (E,).

    W (n, d), Y (n_cols, d). A sampled matmul over the latent-major pattern: each row of W is
    read once and dotted with its tokens' rows of Y (which stay in cache), ~12 ms against ~21 ms
    for :func:`rowwise_dots`' token-major order (B k = 131k entries, n = 16384, d = 576, CPU).
    """
    S = lm.S
    pattern = _csr(S.crow_indices(), S.col_indices(), torch.zeros_like(S.values()), S.shape)  # beta = 0 still
    dots = torch.sparse.sampled_addmm(pattern, W, Y.T, beta=0.0).values()  # propagates NaN: zero values
    return torch.empty_like(dots).index_copy_(0, lm.order, dots)


def sparse_matmul(S: Tensor, Y: Tensor) -> Tensor:
    """S @ Y for a CSR S (n, C) and dense Y (C, d) -> dense (n, d), a new tensor owned by the caller.

    Through ``addmm(out, S, Y, beta=0, out=out)`` on an uninitialised buffer (beta = 0 ignores
    its contents): ~37 ms against ~67 ms for ``S @ Y`` at n = 16384, which zero-fills and copies.
    The buffer is a recycled gradient when the trainer gave one back (:mod:`.workspace`).
    """
    out = take((S.shape[0], Y.shape[1]), Y.dtype, Y.device)
    return torch.addmm(out, S, Y, beta=0.0, out=out)


def token_major_pattern(indices: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """CSR (B, n) pattern with the k entries of row b at columns ``indices[b]`` (B, k), values 0.

    Entry order is the order of ``indices`` (row-major), so the values of a
    ``sampled_addmm`` on it reshape straight back to (B, k).
    """
    B, k = indices.shape
    crow = torch.arange(0, B * k + 1, k, dtype=torch.long, device=indices.device)
    zeros = torch.zeros(B * k, dtype=dtype, device=indices.device)
    return _csr(crow, indices.reshape(-1), zeros, (B, n))


def rowwise_dots(grad: Tensor, W: Tensor, indices: Tensor) -> Tensor:
    """out[b, j] = grad[b] . W[indices[b, j]]  for grad (B, d), W (n, d), indices (B, k) -> (B, k).

    A sampled matmul on the (B, n) pattern: never forms the (B, k, d) gather.
    """
    B, k = indices.shape
    if k == 0:
        return grad.new_zeros(B, 0)
    pattern = token_major_pattern(indices, W.shape[0], grad.dtype)
    out = torch.sparse.sampled_addmm(pattern, grad, W.T, beta=0.0)
    return out.values().reshape(B, k)
