"""Switch SAE's router, gate and load-balancing loss as one autograd function (fast path).

For x_n (B, d), router W_r (E, d), b_r (d,), the token's expert e* (B,) and the selected pre-activations
v (B, k) of its expert (see :mod:`saescale.sae.switch`):

    P    = softmax(x_n W_r^T - W_r b_r)           (B, E)   (computed by the caller, no autograd)
    g    = P[b, e*_b]                              (B,)
    z    = g ReLU(v)                               (B, k)
    bal  = E sum_e f_e mean_b P[b, e]              ()       f = the load (E,), a constant

Backward, with upstream dz (B, k) and dbal ():

    dv       = dz g 1[v > 0]
    dP[b, e] = 1[e = e*_b] sum_j dz[b, j] ReLU(v[b, j])  +  dbal E f_e / B
    dlogits  = P (dP - sum_e dP P)                 (softmax backward)
    dW_r     = dlogits^T x_n - (sum_b dlogits) b_r^T,   db_r = -W_r^T sum_b dlogits

All of it is (B, k), (B, E) or (E, d) work: it runs on one thread (on a loaded machine a second thread's
hand-off costs more than these small operations), and x_n gets no gradient (it is the data).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from saescale.threads import one_thread


class RouterGate(torch.autograd.Function):
    """(x_n, W_r, b_r, v, P, e*, f) -> (z (B, k), bal ()); see the module docstring."""

    @staticmethod
    def forward(ctx: FunctionCtx, x_n: Tensor, W_r: Tensor, b_r: Tensor, v: Tensor, probs: Tensor,
                expert: Tensor, load: Tensor) -> tuple[Tensor, Tensor]:
        with one_thread():
            gate = probs.gather(1, expert[:, None])  # (B, 1)
            act = v.clamp_min(0)
            z = gate * act
            bal = probs.shape[1] * torch.dot(load, probs.mean(0))
        ctx.save_for_backward(x_n, W_r, b_r, act, probs, expert, load, gate)
        ctx.set_materialize_grads(False)
        return z, bal

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, dz: Tensor | None, dbal: Tensor | None):
        x_n, W_r, b_r, act, probs, expert, load, gate = ctx.saved_tensors
        B, E = probs.shape
        with one_thread():
            dv = dz * gate * (act > 0) if dz is not None else None
            dP = probs.new_zeros(B, E)
            if dz is not None:
                dP.scatter_(1, expert[:, None], (dz * act).sum(1, keepdim=True))
            if dbal is not None:
                dP += (dbal * E / B) * load
            dlogits = probs * (dP - (dP * probs).sum(1, keepdim=True))  # (B, E)
            col = dlogits.sum(0)  # (E,)
            dW = dlogits.T @ x_n - torch.outer(col, b_r)
            db = -(W_r.T @ col)
        return None, dW, db, dv, None, None, None


def router_gate(x_n: Tensor, W_r: Tensor, b_r: Tensor, v: Tensor, probs: Tensor, expert: Tensor,
                load: Tensor) -> tuple[Tensor, Tensor]:
    """The gated code z = P[b, e*] ReLU(v) (B, k) and the balance loss E sum_e f_e P_e, differentiable in
    W_r, b_r and v (``probs`` (B, E) must be softmax(x_n W_r^T - W_r b_r), computed without autograd)."""
    return RouterGate.apply(x_n, W_r, b_r, v, probs, expert, load)
