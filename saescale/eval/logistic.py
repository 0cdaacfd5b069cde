"""Logistic regressions for probes: one 1-D fit per latent (vectorised Newton) and a dense L-BFGS probe.

1-D probe for latent i on examples (z_ji, y_j), j = 1..N, z standardised per latent on the train set:

    p_j = σ(w_i z_ji + b_i)
    L_i(w, b) = -(1/N) Σ_j [y_j log p_j + (1 - y_j) log(1 - p_j)] + (λ/2) w²
    gradient  g = (1/N) [Σ (p - y) z + N λ w,  Σ (p - y)]
    Hessian   H = (1/N) [[Σ s z² + N λ, Σ s z], [Σ s z, Σ s]] + ε I,   s = p (1 - p)
    Newton:   (w, b) <- (w, b) - H^{-1} g     (all n latents at once: 2x2 solves in closed form;
              each step component capped at 10 so near-separable latents cannot overshoot)

The held-out score of latent i is the mean cross-entropy on test examples (nats); a constant
latent keeps w = 0 and scores the entropy of the train base rate.

Dense probe: p = σ(x·w + b) on standardised raw activations x (d,), L2 (λ/2)||w||², fitted by
L-BFGS, λ chosen from {1e-3, 1e-2, 0.1, 1} on a 2-fold split of the train set; reported as a
ceiling for the single-latent probes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_STEP = 10.0  # cap on a Newton step (standardised units): keeps near-separable latents from overshooting


def standardize(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    """Scale columns by the train-set mean/std (std floored at 1e-6): (N, m), (N', m) -> same shapes."""
    mu, sd = train.mean(0), train.std(0, unbiased=False).clamp_min(1e-6)
    return (train - mu) / sd, (test - mu) / sd


def newton_1d(z: Tensor, y: Tensor, l2: float = 1e-3, iters: int = 25, tol: float = 1e-13) -> tuple[Tensor, Tensor]:
    """Fit σ(w_i z_i + b_i) for every column i of z (N, m) to labels y (N,) in {0, 1}: -> w, b (m,) float64.

    A column whose Newton step is below ``tol`` in both w and b has converged (the step shrinks
    quadratically from there) and leaves the iteration; tol = 0 iterates every column ``iters`` times
    (the plain reference)."""
    z, y = z.double(), y.double()[:, None]
    n_ex, m = z.shape
    base = y.mean().clamp(1e-4, 1 - 1e-4)
    w = z.new_zeros(m)
    b = torch.full((m,), float(torch.log(base / (1 - base))), dtype=torch.float64)
    eps = 1e-9
    live = None  # indices of the columns still iterating; None = all of them
    for _ in range(iters):
        zl, wl, bl = (z, w, b) if live is None else (z[:, live], w[live], b[live])
        p = torch.sigmoid(zl * wl + bl)  # (N, m_live)
        r, s = p - y, p * (1 - p)
        gw = (r * zl).sum(0) / n_ex + l2 * wl
        gb = r.sum(0) / n_ex
        sz = s * zl
        hww = (sz * zl).sum(0) / n_ex + l2 + eps
        hwb = sz.sum(0) / n_ex
        hbb = s.sum(0) / n_ex + eps
        det = (hww * hbb - hwb * hwb).clamp_min(1e-12)
        dw = ((hbb * gw - hwb * gb) / det).clamp(-MAX_STEP, MAX_STEP)
        db = ((hww * gb - hwb * gw) / det).clamp(-MAX_STEP, MAX_STEP)
        if live is None:
            w, b = w - dw, b - db
        else:
            w[live], b[live] = wl - dw, bl - db
        if tol > 0:
            going = (dw.abs() >= tol) | (db.abs() >= tol)
            if not bool(going.any()):
                break
            if not bool(going.all()):
                live = going.nonzero()[:, 0] if live is None else live[going]
    return w, b


def cross_entropy_1d(z: Tensor, y: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Mean CE (m,) of each column's probe on examples z (N, m), labels y (N,)."""
    logits = z.double() * w + b
    return F.binary_cross_entropy_with_logits(logits, y.double()[:, None].expand_as(logits), reduction="none").mean(0)


L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)  # dense-probe L2 strengths tried (chosen on a split of the train set)


def _fit_dense(x: Tensor, y: Tensor, l2: float, iters: int) -> tuple[Tensor, Tensor]:
    """L-BFGS fit of σ(x·w + b) with (λ/2)||w||² on standardised x (N, d): -> w (d,), b ()."""
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, y) + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def _ce(x: Tensor, y: Tensor, wb: tuple[Tensor, Tensor]) -> float:
    return float(F.binary_cross_entropy_with_logits(x @ wb[0] + wb[1], y))


def dense_probe(x_tr: Tensor, y_tr: Tensor, x_te: Tensor, y_te: Tensor, iters: int = 100) -> float:
    """Held-out CE (nats) of an L2 logistic probe on all columns; λ from :data:`L2_GRID` by a 2-fold split of train."""
    x_tr, x_te = standardize(x_tr.double(), x_te.double())
    y_tr, y_te = y_tr.double(), y_te.double()
    half = torch.arange(len(y_tr)) % 2 == 0  # deterministic inner split (examples are in pool order)

    def inner(l2: float) -> float:
        return _ce(x_tr[~half], y_tr[~half], _fit_dense(x_tr[half], y_tr[half], l2, iters))

    best = min(L2_GRID, key=inner)
    return _ce(x_te, y_te, _fit_dense(x_tr, y_tr, best, iters))
