"""Top-m selection over latent chunks without the (B, n) pre-activation matrix (no autograd).

For x_c = x_n - b_pre (B, d), the pre-activations pre = x_c W_enc^T + b_enc (B, n) are
computed ``chunk`` latents at a time (one ``addmm`` per chunk into a reused buffer) and
merged into a running top-m per row; the merge first narrows each chunk to a few groups
per row by their maxima (see :class:`RunningTopK`), so no ``topk`` runs over a whole chunk.
A second running top-k_aux over the dead latents only (the chunk with live latents set
to -inf) serves AuxK, from the same chunks.

Ties: any valid top-m is returned (which of several equal values is kept is not
specified, as for ``torch.topk``), deterministically for the same inputs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from saescale.kernels.threads import one_thread

DEFAULT_CHUNK = 2048
MERGE_EVERY = 8  # chunks whose candidates are merged by one topk


class Selection(NamedTuple):
    """Pre-activation values and latent indices of the selected entries, each (B, m) / (B, k_aux)."""

    values: Tensor  # (B, m) sorted descending
    indices: Tensor  # (B, m) int64
    aux_values: Tensor  # (B, k_aux) among dead latents, sorted descending (k_aux may be 0)
    aux_indices: Tensor  # (B, k_aux) int64


class _Segment(NamedTuple):
    """Candidates of one chunk: values (B, w) and how to recover the latent of each column.

    Grouped (``hit`` given): column j m + s is latent offset + hit[:, s] + j stride.
    Explicit (``hit`` None): column i is latent offset + local[:, i].
    """

    values: Tensor  # (B, w)
    offset: int
    hit: Tensor | None  # (B, m) group ids
    stride: int  # groups per chunk (column distance between slices)
    local: Tensor | None  # (B, w) chunk-local columns

    def latents(self, rel: Tensor) -> Tensor:
        """Latent ids (B, m) for column positions rel (B, m), clamped into this segment."""
        rel = rel.clamp(0, self.values.shape[1] - 1)
        if self.hit is None:
            return self.local.gather(1, rel) + self.offset
        m = self.hit.shape[1]
        return self.hit.gather(1, rel % m) + (rel // m) * self.stride + self.offset


class RunningTopK:
    """Running top-m per row over column chunks: values (B, m), indices (B, m) int64.

    A chunk pre (B, c) is cut into c/g strided groups of g columns (group h holds columns
    h, h + c/g, h + 2c/g, ...); one vectorised max over the g slices gives the (B, c/g) group
    maxima. The m groups with the largest maxima contain a valid top-m of the chunk (an
    element outside them is at most each of their m maxima), so only their m g entries
    are kept as candidates, instead of a ``topk`` over all c columns; the candidates of
    ``MERGE_EVERY`` chunks are merged with the running top-m by one ``topk``, and latent
    ids are worked out for the m winners only.
    g ~ sqrt(c / m) balances the two small ``topk`` calls (over c/g maxima and m g entries).
    """

    def __init__(self, B: int, m: int, like: Tensor):
        self.m = m
        self.values = like.new_full((B, m), float("-inf"))
        self.indices = torch.zeros(B, m, dtype=torch.long, device=like.device)
        self.pending: list[_Segment] = []  # candidates not merged yet

    def update(self, pre: Tensor, offset: int) -> None:
        """Add the candidates of a chunk pre (B, c) whose column i is latent ``offset + i``."""
        B, c = pre.shape
        if self.m == 0 or c == 0:
            return
        g = group_size(c, self.m)
        if g < 2:
            cand, local = pre.topk(min(self.m, c), dim=1, sorted=False)
            self.pending.append(_Segment(cand, offset, None, 0, local))
        else:
            slices = pre.view(B, g, c // g)
            hit = slices.amax(dim=1).topk(self.m, dim=1, sorted=False).indices  # (B, m) groups
            cand = slices.gather(2, hit[:, None, :].expand(B, g, self.m)).view(B, -1)  # (B, g m)
            self.pending.append(_Segment(cand, offset, hit, c // g, None))
        if len(self.pending) >= MERGE_EVERY:
            self._merge()

    def _merge(self) -> None:
        """Keep the top m of running (B, m) + all pending candidates."""
        if not self.pending:
            return
        segments, self.pending = self.pending, []
        v = torch.cat([self.values] + [seg.values for seg in segments], dim=1)
        self.values, pos = v.topk(self.m, dim=1, sorted=False)
        shapes = {(seg.hit is not None, seg.values.shape[1], seg.stride) for seg in segments}
        with one_thread():  # a dozen ops on (B, m) tensors
            if len(shapes) == 1 and segments[0].hit is not None:
                self.indices = self._latents_uniform(pos, segments)
            else:
                self.indices = self._latents_any(pos, [_Segment(self.values, 0, None, 0, self.indices)] + segments)

    def _latents_uniform(self, pos: Tensor, segments: list[_Segment]) -> Tensor:
        """Latent ids (B, m) of merged positions pos, when all segments are grouped alike (few ops)."""
        m, w, stride = self.m, segments[0].values.shape[1], segments[0].stride
        hits = torch.stack([seg.hit for seg in segments], dim=1).view(pos.shape[0], -1)  # (B, S m)
        offsets = torch.tensor([seg.offset for seg in segments], device=pos.device)  # (S,)
        q = (pos - m).clamp_min(0)  # position among the candidates
        seg, r = q // w, q % w
        latent = hits.gather(1, seg * m + r % m) + (r // m) * stride + offsets[seg]
        return torch.where(pos < m, self.indices.gather(1, pos.clamp_max(m - 1)), latent)

    @staticmethod
    def _latents_any(pos: Tensor, segments: list[_Segment]) -> Tensor:
        """Latent ids (B, m) of merged positions pos over segments of any kind (one pass per segment)."""
        indices, start = torch.zeros_like(pos), 0
        for seg in segments:
            rel = pos - start
            inside = (rel >= 0) & (rel < seg.values.shape[1])
            indices = torch.where(inside, seg.latents(rel), indices)
            start += seg.values.shape[1]
        return indices

    def result(self) -> tuple[Tensor, Tensor]:
        """(values, indices) sorted by value, descending."""
        self._merge()
        values, pos = self.values.sort(dim=1, descending=True, stable=True)
        return values, self.indices.gather(1, pos)

def group_size(c: int, m: int) -> int:
    """Columns per group for a chunk of c columns and a top-m: a power of two near sqrt(c / m)
    dividing c, with at least 2 m groups; 1 (plain ``topk``) when none fits."""
    g = 2 ** max(0, round(math.log2(max(c / max(m, 1), 1)) / 2))
    while g > 1 and (c % g or c // g < 2 * m):
        g //= 2
    return g


@torch.no_grad()
def select_topk(x_c: Tensor, W_enc: Tensor, b_enc: Tensor, m: int, dead: Tensor | None = None,
                k_aux: int = 0, chunk: int = DEFAULT_CHUNK) -> Selection:
    """Top-m of pre = x_c W_enc^T + b_enc per row, and top-k_aux among ``dead`` (n,) bool latents.

    x_c (B, d), W_enc (n, d), b_enc (n,). Never holds more than a (B, chunk) block of pre.
    Requires m <= n and k_aux <= dead.sum().
    """
    B, n = x_c.shape[0], W_enc.shape[0]
    main = RunningTopK(B, m, x_c)
    aux = RunningTopK(B, k_aux if dead is not None else 0, x_c)
    buf = x_c.new_empty(B * min(chunk, n))
    masked = x_c.new_empty(B * min(chunk, n)) if aux.m else None
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
