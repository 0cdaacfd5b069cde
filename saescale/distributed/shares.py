"""Losses of a data-parallel step as shares of the global-batch loss.

Data rank r holds B_r = B / D rows of the global batch (B rows). Its share s_r is chosen so
that sum_r s_r is the single-process loss on the whole batch; the gradients of the shares,
summed over the data group (one all-reduce), are then the single-process gradients:

    main:  s_r = scale * sum_{b in r} ||x_b - x̂_b||^2 / B                     (a mean over tokens)
    AuxK:  s_r = sum_{b in r} ||e_b - ê_b||^2 / V,   V = sum_{b in B} ||e_b - mean_B e||^2
           V is a batch statistic without gradient (e is detached), computed over the global batch
           in float64 with two all-reduces: the mean of e, then the sum of squared deviations.
           0 when the ratio is NaN/inf (no dead latents, constant e), as :func:`saescale.losses.auxk_loss`.

With one data replica both are the single-process functions of :mod:`saescale.losses`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saescale import losses
from saescale.distributed.mesh import Mesh


def mse_share(x_hat: Tensor, x: Tensor, scale: float, batch: int) -> Tensor:
    """This rank's share of scale * E_B ||x - x̂||^2; x, x_hat (B_r, d), ``batch`` = B (with one replica,
    B_r = B and this is :func:`saescale.losses.scaled_mse` exactly)."""
    return losses.squared_error(x_hat, x) * (scale / batch)


def centered_sq_sum(x: Tensor, batch: int, mesh: Mesh) -> Tensor:
    """sum over the global batch of ||x_b - mean_B x||^2 from this rank's rows x (B_r, d), no gradient; () float64."""
    x = x.detach().double()
    mean = mesh.all_reduce(x.sum(0), "data") / batch  # (d,)
    return mesh.all_reduce((x - mean).pow(2).sum(), "data")


def auxk_share(e_hat: Tensor, e: Tensor, batch: int, mesh: Mesh) -> Tensor:
    """This rank's share of the AuxK loss ||e - ê||^2 / V over the global batch; e, e_hat (B_r, d)."""
    if mesh.data_shards == 1:
        return losses.auxk_loss(e_hat, e)
    e = e.detach()
    ratio = losses.squared_error(e_hat, e) / centered_sq_sum(e, batch, mesh).to(e.dtype)
    return torch.nan_to_num(ratio, nan=0.0, posinf=0.0)
