"""Training losses as small pure functions (no module state, no side effects).

Shapes: x, x_hat, e, e_hat are (B, d); values (B, k).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def normalized_mse(x_hat: Tensor, x: Tensor, mean: Tensor | None = None) -> Tensor:
    """nMSE = sum ||x - x̂||^2 / sum ||x - mu||^2, mu = ``mean`` (d,) or the batch mean of x.

    The paper's normalised MSE: MSE over the MSE of always predicting the mean.
    """
    mu = x.mean(0, keepdim=True) if mean is None else mean
    return squared_error(x_hat, x) / squared_error(mu.expand_as(x), x)


def squared_error(x_hat: Tensor, x: Tensor) -> Tensor:
    """sum_b ||x_b - x̂_b||^2, a scalar; ``mse_loss`` does it in one fused pass each way
    (one (B, d) temporary forward, one backward; the ``(x - x̂).pow(2)`` chain made five)."""
    return F.mse_loss(x_hat, x, reduction="sum")


def scaled_mse(x_hat: Tensor, x: Tensor, scale: float, batch: int | None = None) -> Tensor:
    """scale * sum_b ||x_b - x̂_b||^2 / B with a constant scale (1 / E||x - E x||^2 from a data sample).

    The main training loss: the same as nMSE but with a denominator fixed once,
    not recomputed per batch (PAPER.md, 'Optimiser and schedule'). B = ``batch``, the global
    batch, when x holds one data-parallel rank's rows of it (then the ranks' values sum to the
    loss on the whole batch); x.shape[0] by default.
    """
    return squared_error(x_hat, x) * (scale / (batch or x.shape[0]))


def auxk_loss(e_hat: Tensor, e: Tensor, var: Tensor | None = None) -> Tensor:
    """L_aux = ||e - ê||^2 / V, V = sum_b ||e_b - mean_B e||^2; 0 when NaN/inf (no dead latents, constant e).

    e = x - x̂ is the main model's residual (no gradient through it, nor through V); ê is the
    reconstruction of e from the top-k_aux dead latents (decoder without bias). ``var`` is V
    over the global batch when e holds one data-parallel rank's rows (see
    :func:`saescale.distributed.collectives.centered_sq_sum`); by default V is e's own.
    """
    ratio = normalized_mse(e_hat, e.detach()) if var is None else squared_error(e_hat, e.detach()) / var.to(e.dtype)
    return torch.nan_to_num(ratio, nan=0.0, posinf=0.0)


def multi_topk_loss(loss_k: Tensor, loss_4k: Tensor) -> Tensor:
    """Multi-TopK: L(k) + L(4k) / 8, both from the same pre-activations."""
    return loss_k + loss_4k / 8


def l1_penalty(z: Tensor, dec_norms: Tensor) -> Tensor:
    """E_b sum_i |z_i| ||W_dec[i]||: the L1 penalty weighted by decoder row norms.

    z: (B, n) non-negative codes, dec_norms: (n,). The weighting stops the penalty
    being gamed by shrinking z and growing the decoder rows.
    """
    return (z.abs() * dec_norms).sum(-1).mean()


def switch_balance_loss(load: Tensor, probs: Tensor) -> Tensor:
    """Switch load balancing: E sum_e f_e P_e, f_e = ``load`` (E,) the fraction of tokens routed to expert e
    (no gradient), P_e the mean over the batch of ``probs`` (B, E). 1 at uniform routing, E when every
    token goes to one expert with probability 1; its gradient lowers the probability of busy experts."""
    E = probs.shape[1]
    return E * torch.dot(load.detach(), probs.mean(0))
