"""The two differentiable collectives of latent sharding (the Megatron pair), over the latent group.

With the latents split over L ranks, each rank l computes a function of the shared input and of
its own rows only, and every rank computes the same loss from the summed result:

    x   (B, d)  the same on every rank  --copy_to_shards-->  f_l(x)   (rank l's encoder)
    p_l (B, d)  rank l's partial decode --sum_over_shards--> y = sum_l p_l, then L(y) on every rank

    copy_to_shards:  forward identity;   backward dL/dx = sum_l dL_l/dx   (all-reduce)
    sum_over_shards: forward all-reduce;  backward dL/dp_l = dL/dy         (identity: every rank
                                                                            already holds dL/dy)

With one latent shard both are the identity and add no autograd node.

:func:`centered_sq_sum` is the one batch statistic a data-parallel loss needs over the whole
global batch (the AuxK denominator, see :func:`saescale.losses.auxk_loss`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

from saescale.distributed.mesh import Mesh


class _CopyToShards(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, mesh: Mesh) -> Tensor:
        ctx.mesh = mesh
        return x.view_as(x)

    @staticmethod
    def backward(ctx: FunctionCtx, g: Tensor) -> tuple[Tensor, None]:
        return ctx.mesh.all_reduce(g.contiguous().clone(), "latent"), None


class _SumOverShards(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, p: Tensor, mesh: Mesh) -> Tensor:
        return mesh.all_reduce(p.contiguous().clone(), "latent")

    @staticmethod
    def backward(ctx: FunctionCtx, g: Tensor) -> tuple[Tensor, None]:
        return g, None


def copy_to_shards(x: Tensor, mesh: Mesh) -> Tensor:
    """x (B, d), identical on the latent group's ranks; its gradient is summed over them."""
    return x if mesh.latent_shards == 1 else _CopyToShards.apply(x, mesh)


def sum_over_shards(p: Tensor, mesh: Mesh) -> Tensor:
    """sum over the latent group of each rank's partial p (any shape); the gradient passes through."""
    return p if mesh.latent_shards == 1 else _SumOverShards.apply(p, mesh)


def centered_sq_sum(x: Tensor, batch: int, mesh: Mesh) -> Tensor:
    """sum over the global batch (``batch`` rows on the data group) of ||x_b - mean_B x||^2, from this
    rank's rows x (B_r, d); no gradient; () float64, with two all-reduces (the mean, then the sum)."""
    x = x.detach().double()
    mean = mesh.all_reduce(x.sum(0), "data") / batch  # (d,)
    return mesh.all_reduce((x - mean).pow(2).sum(), "data")
