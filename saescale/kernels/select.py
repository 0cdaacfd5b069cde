"""Top-m selection over latent chunks without the (B, n) pre-activation matrix (no autograd).

For x_c = x_n - b_pre (B, d), the pre-activations pre = x_c W_enc^T + b_enc (B, n) are
computed ``chunk`` latents at a time (one ``addmm`` per chunk into a reused buffer). Each
chunk is narrowed to m candidate *groups* per row by their maxima, and the groups of all
chunks are merged by their maxima again (see :class:`RunningTopK`), so no ``topk`` ever runs
over a whole chunk or over all candidates. A second running top-k_aux over the dead latents
only (the chunk with live latents set to -inf) serves AuxK, from the same chunks.

Why group maxima give an exact top-m: if a row's entries are cut into groups, the m groups
with the largest maxima contain a valid top-m of the row (an entry outside them is at most
each of their m maxima, which are m distinct entries). This holds for any partition, so it
can be applied per chunk, across chunks, and again inside the winning groups.

Ties: any valid top-m is returned (which of several equal values is kept is not
specified, as for ``torch.topk``), deterministically for the same inputs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from saescale.kernels import precision
from saescale.kernels.workspace import scratch
from saescale.threads import one_thread

DEFAULT_CHUNK = 4096  # CPU: a (4096, 4096) float32 block (64 MB) per matmul
CUDA_CHUNK = 65536  # CUDA: fewer, larger blocks (kernel launches, not cache, are the cost there)
MAX_GROUP = 64  # columns per group at most (bounds the candidate buffers of large chunks)
MERGE_EVERY = 8  # chunks whose candidate groups are merged at once (bounds memory at large n)
GROUPS_PER_M = 4  # a chunk of c columns is cut into about 4 m groups: one topk over 4 m maxima
STRIDED_BELOW = 32  # groups of fewer columns are strided, not contiguous (see RunningTopK)


class Selection(NamedTuple):
    """Pre-activation values and latent indices of the selected entries, each (B, m) / (B, k_aux)."""

    values: Tensor  # (B, m) sorted descending
    indices: Tensor  # (B, m) int64
    aux_values: Tensor  # (B, k_aux) among dead latents, sorted descending (k_aux may be 0)
    aux_indices: Tensor  # (B, k_aux) int64


def group_size(c: int, m: int) -> int:
    """Columns per group for c columns and a top-m: the power of two nearest c / (4 m), at most
    ``MAX_GROUP``, that divides c and leaves at least 2 m groups; 1 (plain ``topk``) when none does."""
    g = min(MAX_GROUP, 2 ** max(0, round(math.log2(max(c / (GROUPS_PER_M * max(m, 1)), 1)))))
    while g > 1 and (c % g or c // g < 2 * m):
        g //= 2
    return g


def split(t: Tensor, q: int) -> tuple[Tensor, Tensor]:
    """(t // q, t % q) for a non-negative int64 tensor t: a shift and a mask when q is a power of two (~10x
    faster than int64 division on CPU: 0.25 ms against 2.8 ms for (4096, 256) on one thread)."""
    if q & (q - 1) == 0:
        s = q.bit_length() - 1
        return t >> s, t & (q - 1)
    hi = torch.div(t, q, rounding_mode="floor")
    return hi, t - hi * q


def top_columns(v: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """Top-m of each row of v (B, w), unsorted: values (B, m) and their columns (B, m) int64.

    Recursive group pruning: the strided groups (group h = columns h, h + w/g, ...) with the m
    largest maxima are kept (B, g m), and their top-m found the same way, until a plain ``topk``
    over a few m columns is cheaper. Requires m <= w.
    """
    B, w = v.shape
    g = group_size(w, m)
    if g < 2:
        return v.topk(m, dim=1, sorted=False)
    slices = v.view(B, g, w // g)
    hit = slices.amax(dim=1).topk(m, dim=1, sorted=False).indices  # (B, m) groups
    cand = slices.gather(2, hit[:, None, :].expand(B, g, m)).view(B, g * m)  # column j m + s: slice j of hit s
    values, pos = top_columns(cand, m)
    slot, group = split(pos, m)  # column j m + s of cand: slice j of hit s
    return values, hit.gather(1, group) + slot * (w // g)


class RunningTopK:
    """Running top-m per row over column chunks of width c: values (B, m), indices (B, m) int64.

    A chunk pre (B, c) is cut into c/g groups of g columns (g from :func:`group_size`, about 4 m
    groups; contiguous when g >= 32, else strided: group h = columns h, h + c/g, ...); one
    vectorised max over each group gives the (B, c/g) group maxima, and the
    m groups with the largest are kept whole: their maxima (B, m), group ids (B, m) and entries
    (B m, g), written into buffers for ``MERGE_EVERY`` chunks. A merge takes the m groups with the
    largest maxima over those chunks, finds the top-m of their m g entries by :func:`top_columns`,
    and combines it with the running top-m (one ``topk`` over 2 m). A chunk of another width (the
    last one) or too narrow to group goes through :func:`top_columns` and is combined directly.
    """

    def __init__(self, B: int, m: int, like: Tensor, chunk: int, name: str = "top"):
        self.B, self.m, self.c, self.like = B, m, chunk, like
        self.g = group_size(chunk, m) if m else 1
        # a max over an innermost run of fewer than 32 floats is slow (4096 x 4096 block: 9.4 ms in groups
        # of 8, 2.5 ms of 32), so small groups are strided; contiguous ones copy faster from 32 up
        self.strided = self.g < STRIDED_BELOW
        self.values: Tensor | None = None  # running exact top-m, (B, <= m)
        self.indices: Tensor | None = None
        self.offsets: list[int] = []  # chunks held in the buffers
        if m and self.g >= 2:  # reused memory (see workspace): the candidate buffer is 16 MB a chunk
            dt, dev = like.dtype, like.device
            self.maxima = scratch(f"{name}.maxima", (MERGE_EVERY, B, m), dt, dev)
            self.hits = scratch(f"{name}.hits", (MERGE_EVERY, B, m), torch.long, dev)
            self.cand = scratch(f"{name}.cand", (MERGE_EVERY, B * m, self.g), dt, dev)
            self.rows = torch.arange(B, device=like.device)[:, None]  # (B, 1)

    def update(self, pre: Tensor, offset: int) -> None:
        """Add a chunk pre (B, c) whose column i is latent ``offset + i``."""
        B, c = pre.shape
        if self.m == 0 or c == 0:
            return
        if self.g < 2 or c != self.c:
            values, cols = top_columns(pre, min(self.m, c))
            self._combine(values, cols + offset)
            return
        s, groups, g = len(self.offsets), c // self.g, self.g
        if self.strided:  # group h = columns h, h + c/g, ...: the max runs over whole rows of c/g columns
            slices = pre.view(B, g, groups)
            torch.topk(slices.amax(dim=1), self.m, dim=1, sorted=False, out=(self.maxima[s], self.hits[s]))
            torch.gather(slices, 2, self.hits[s][:, None, :].expand(B, g, self.m),
                         out=self.cand[s].view(B, self.m, g).transpose(1, 2))
        else:  # group h = columns h g .. h g + g - 1: each group's entries are one contiguous row to copy
            torch.topk(pre.view(B, groups, g).amax(dim=2), self.m, dim=1, sorted=False,
                       out=(self.maxima[s], self.hits[s]))
            with one_thread():
                flat = (self.hits[s] + self.rows * groups).view(-1)
            torch.index_select(pre.view(B * groups, g), 0, flat, out=self.cand[s])
        self.offsets.append(offset)
        if len(self.offsets) == MERGE_EVERY:
            self._merge()

    def _merge(self) -> None:
        """Top-m over the buffered chunks (by group maxima, then inside the m winning groups)."""
        S, (B, m, g) = len(self.offsets), (self.B, self.m, self.g)
        if S == 0:
            return
        if S == 1:  # one chunk: its m groups are the winners, in buffer order (slot s of row b: row b m + s)
            cand = self.cand[0].view(B, m * g)
        else:
            maxima = self.maxima[:S].permute(1, 0, 2).reshape(B, S * m)
            _, best = maxima.topk(m, dim=1, sorted=False)  # (B, m) winning (chunk, slot) = divmod(best, m)
            with one_thread():
                chunk, slot = split(best, m)
                rows = chunk * (B * m) + self.rows * m + slot  # rows of the (S B m, g) buffer
            cand = self.cand[:S].view(-1, g).index_select(0, rows.view(-1)).view(B, m * g)
        values, pos = top_columns(cand, m)
        with one_thread():  # a few ops on (B, m) tensors
            group, inside = split(pos, g)
            won = group if S == 1 else best.gather(1, group)  # (B, m) in [0, S m)
            hits = self.hits[:S].permute(1, 0, 2).reshape(B, S * m).gather(1, won)
            offsets = torch.tensor(self.offsets, device=hits.device)[split(won, m)[0]]
            indices = offsets + (hits + inside * (self.c // g) if self.strided else hits * g + inside)
        self.offsets = []
        self._combine(values, indices)

    def _combine(self, values: Tensor, indices: Tensor) -> None:
        """Merge an exact top set (B, <= m) of other columns into the running top-m."""
        if self.values is not None:
            values, indices = torch.cat([self.values, values], 1), torch.cat([self.indices, indices], 1)
            if values.shape[1] > self.m:
                values, pos = values.topk(self.m, dim=1, sorted=False)
                indices = indices.gather(1, pos)
        self.values, self.indices = values, indices

    def result(self) -> tuple[Tensor, Tensor]:
        """(values, indices) sorted by value, descending: (B, m), or (B, 0) when m = 0."""
        self._merge()
        if self.values is None:
            return self.like.new_empty(self.B, 0), self.like.new_empty(self.B, 0, dtype=torch.long)
        values, pos = self.values.sort(dim=1, descending=True, stable=True)
        return values, self.indices.gather(1, pos)


def select_topk(x_c: Tensor, W_enc: Tensor, b_enc: Tensor, m: int, dead: Tensor | None = None,
                k_aux: int = 0, chunk: int = DEFAULT_CHUNK) -> Selection:
    """Top-m of pre = x_c W_enc^T + b_enc per row, and top-k_aux among ``dead`` (n,) bool latents, in the
    precision installed around the step (:mod:`saescale.kernels.precision`): float32
    (:func:`select_topk_fp32`), or bf16 candidates certified exact / approximate
    (:func:`~saescale.kernels.bf16_select.select_topk_bf16`) for float32 inputs."""
    mode = precision.active()
    if mode == "float32" or x_c.dtype != torch.float32:
        return select_topk_fp32(x_c, W_enc, b_enc, m, dead, k_aux, chunk)
    from saescale.kernels.bf16_select import select_topk_bf16  # it builds on this module

    return select_topk_bf16(x_c, W_enc, b_enc, m, dead, k_aux, chunk, certify=mode == "bfloat16")


@torch.no_grad()
def select_topk_fp32(x_c: Tensor, W_enc: Tensor, b_enc: Tensor, m: int, dead: Tensor | None = None,
                     k_aux: int = 0, chunk: int = DEFAULT_CHUNK) -> Selection:
    """Top-m of pre = x_c W_enc^T + b_enc per row, and top-k_aux among ``dead`` (n,) bool latents, in float32.

    x_c (B, d), W_enc (n, d), b_enc (n,). Never holds more than a (B, chunk) block of pre.
    Requires m <= n and k_aux <= dead.sum().
    """
    B, n = x_c.shape[0], W_enc.shape[0]
    chunk = min(chunk, n)
    main = RunningTopK(B, m, x_c, chunk, "top")
    aux = RunningTopK(B, k_aux if dead is not None else 0, x_c, chunk, "aux")
    buf = scratch("select.block", (B * chunk,), x_c.dtype, x_c.device)
    masked = scratch("select.masked", (B * chunk,), x_c.dtype, x_c.device) if aux.m else None
    neg_inf = x_c.new_full((), float("-inf"))
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        pre = buf[: B * (stop - start)].view(B, stop - start)
        torch.addmm(b_enc[start:stop], x_c, W_enc[start:stop].T, out=pre)  # (B, c)
        main.update(pre, start)
        if aux.m and bool(dead[start:stop].any()):
            aux_pre = masked[: pre.numel()].view_as(pre)  # pre where dead, -inf elsewhere
            torch.where(dead[start:stop], pre, neg_inf, out=aux_pre)
            aux.update(aux_pre, start)
    return Selection(*main.result(), *aux.result())
