"""Nearest latents by decoder cosine: cos(i, j) = <W_dec[i], W_dec[j]> / (|W_dec[i]| |W_dec[j]|), j != i."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def nearest(W_dec: Tensor, count: int = 8, block: int = 1024) -> tuple[Tensor, Tensor]:
    """(ids (n, count), cosines (n, count)), highest first, ``block`` rows at a time (memory O(block * n))."""
    u = torch.nn.functional.normalize(W_dec.float(), dim=1)
    n, count = len(u), min(count, len(u) - 1)
    ids, cos = [], []
    for lo in range(0, n, block):
        sim = u[lo : lo + block] @ u.T  # (b, n)
        rows = torch.arange(lo, min(lo + block, n))
        sim[torch.arange(len(rows)), rows] = -float("inf")  # not itself
        c, i = sim.topk(count, dim=1)
        ids.append(i)
        cos.append(c)
    return torch.cat(ids), torch.cat(cos)
