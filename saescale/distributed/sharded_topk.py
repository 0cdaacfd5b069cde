"""Exact global top-m over latents split across ranks, from per-rank candidates.

Rank l of the latent group holds the pre-activations of latents [l n_L, (l+1) n_L) only,
pre_l (B, n_L), n_L = n / L. Per token:

    1. rank l proposes its local top-c, c = min(m, n_L): values (B, c), global latent indices (B, c)
    2. the candidates are all-gathered over the latent group:      values, indices (B, L c)
    3. the global top-m is taken from the L c candidates, ordered by
       (value descending, latent index ascending)

Exact, not approximate: an entry of the global top-m is among the m largest of its own shard,
so it is always a candidate. (The released code instead keeps a fixed capacity per shard, which
drops entries when a token's top-k falls mostly on one shard.) The cost is L c values and
indices per token gathered, against the (B, n_L) matmul each rank does anyway.

Ties: among exactly equal values the lower latent index wins. :func:`sharded_topk` chooses the
local candidates by the same rule, so its result is the unique (value desc, index asc) top-m
of the whole row. In training, the local candidates come from the fast chunked kernel, which
keeps *a* valid top-c of its shard (which of several exactly equal values it keeps is not
specified, as for ``torch.topk`` in one process): the selected values are the exact global
top-m values either way, and the choice is deterministic for the same inputs and layout.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saescale.distributed.mesh import Mesh


def stable_topk(v: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """Top-m of each row of v (B, w) by (value desc, column asc): values (B, m) sorted, columns (B, m)."""
    values, cols = v.sort(dim=1, descending=True, stable=True)
    return values[:, :m], cols[:, :m]


def merge_candidates(values: Tensor, indices: Tensor, m: int) -> Tensor:
    """Positions (B, m) in the candidate arrays (B, C) of the top-m by (value desc, latent index asc), in that order."""
    by_index = indices.argsort(dim=1, stable=True)  # (B, C) candidates in latent order
    top = values.gather(1, by_index).argsort(dim=1, descending=True, stable=True)[:, :m]
    return by_index.gather(1, top)


def pad_candidates(values: Tensor, indices: Tensor, c: int) -> tuple[Tensor, Tensor]:
    """Pad (B, c') candidates to (B, c) with value -inf and index -1 (never selected while c' >= the number wanted)."""
    B, have = values.shape
    if have == c:
        return values, indices
    return (torch.cat([values, values.new_full((B, c - have), float("-inf"))], 1),
            torch.cat([indices, indices.new_full((B, c - have), -1)], 1))


def gather_candidates(values: Tensor, indices: Tensor, mesh: Mesh) -> tuple[Tensor, Tensor]:
    """All-gather each rank's candidates (B, c) over the latent group -> (B, L c), rank l's in columns [l c, (l+1) c)."""
    B, c = values.shape
    v = mesh.all_gather(values.detach(), "latent")  # (L, B, c)
    i = mesh.all_gather(indices, "latent")
    return v.permute(1, 0, 2).reshape(B, -1), i.permute(1, 0, 2).reshape(B, -1)


def global_order(values: Tensor, indices: Tensor, m: int, mesh: Mesh) -> Tensor:
    """For this rank's candidates, values (B, c) and global latent indices (B, c): each one's position
    in the global top-m order (0 = largest), or m when it is not selected -> (B, c) int64.

    With one latent shard the candidates are the selection, in their own (sorted) order.
    """
    B, c = values.shape
    if mesh.latent_shards == 1:
        pos = torch.arange(c, device=values.device).expand(B, c)
        return torch.where(pos < m, pos, m)
    all_v, all_i = gather_candidates(values, indices, mesh)
    top = merge_candidates(all_v, all_i, m)  # (B, m)
    order = torch.full_like(all_i, m)
    order.scatter_(1, top, torch.arange(m, device=values.device).expand(B, m))
    return order[:, mesh.latent_rank * c : (mesh.latent_rank + 1) * c]


def sharded_topk(pre: Tensor, m: int, mesh: Mesh) -> tuple[Tensor, Tensor]:
    """The exact global top-m from this rank's pre-activations pre_l (B, n_L), on every rank of the
    latent group: values (B, m) sorted descending and global latent indices (B, m), ties to the
    lower index. (The reference path; training uses :func:`global_order` on the kernel's candidates.)"""
    n_l = pre.shape[1]
    values, cols = stable_topk(pre, min(m, n_l))
    all_v, all_i = gather_candidates(values, cols + mesh.latent_rank * n_l, mesh)
    top = merge_candidates(all_v, all_i, m)
    return all_v.gather(1, top), all_i.gather(1, top)
