"""The learning-rate rule lr*(n), from (n, k) swept over ≥ 3 learning rates.

For each such (n, k), at its largest token budget, with x = log lr and y = mean log loss
per lr (seeds are averaged before, by saescale.scaling.groups; any repeats at one lr here
are averaged in log), fit the parabola y = u x² + v x + w; the best lr is
exp(−v / 2u), clamped to the tried range (when u ≤ 0 there is no minimum: the tried lr
with the lowest loss). Over all such (n, k),

    lr*(n) = exp(log_A) · n^p

is fitted by least squares on (log n, log lr*), next to saescale's default rule at batch 4096
(saescale.train.config.LR_RULE, fitted this way to examples/sweep-lr.toml) and the paper's
lr = 2e-4 / sqrt(n / 2^14) (log_A = log(2e-4 · 2^7), p = −0.5).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from saescale.scaling.fitting import Skipped, fit_power_law
from saescale.scaling.results import Member
from saescale.train.config import LR_RULE, PAPER_LR_RULE

DEFAULT = {"log_A": LR_RULE["log_A"], "p": LR_RULE["p"]}
"""saescale's default rule at batch 4096 as a power law."""


def best_lr(lrs: np.ndarray, losses: np.ndarray) -> tuple[float, bool]:
    """(best lr, clamped?) from the parabola of log loss in log lr through lrs (P,) and losses (P,).

    The parabola goes through the best tried lr and its two neighbours only (the three points
    of the window of three consecutive lrs with the lowest summed loss when the best is at an edge),
    so runs far from the optimum, e.g. diverged ones at a too-large lr, do not pull the vertex.
    'clamped' is True when the optimum lies at or beyond the edge of the tried range.
    """
    x, y = np.log(lrs), np.log(losses)
    xs = np.unique(x)
    ym = np.array([y[x == v].mean() for v in xs])  # mean over seeds at each lr
    best = int(np.argmin(ym))
    if len(xs) > 3:
        lo = min(max(best - 1, 0), len(xs) - 3)
        xs, ym = xs[lo : lo + 3], ym[lo : lo + 3]
        best -= lo
    u, v, _ = np.polyfit(xs, ym, 2)
    if u <= 0:
        return float(np.exp(xs[best])), best in (0, len(xs) - 1)
    x_star = -v / (2 * u)
    clamped = not xs[0] < x_star < xs[-1]
    return float(np.exp(np.clip(x_star, xs[0], xs[-1]))), clamped


def lr_points(members: list[Member]) -> list[dict]:
    """One best lr per (n, k) with ≥ 3 distinct lr at its largest token budget."""
    groups: dict[tuple[int, int], list[Member]] = defaultdict(list)
    for m in members:
        groups[(m.n, m.k)].append(m)
    out = []
    for (n, k), ms in sorted(groups.items()):
        top = max(m.tokens for m in ms)
        ms = [m for m in ms if m.tokens == top]
        if len({m.lr for m in ms}) < 3:
            continue
        lr, clamped = best_lr(np.array([m.lr for m in ms]), np.array([m.loss for m in ms]))
        out.append({"n": n, "k": k, "tokens": top, "lr": lr, "clamped": clamped, "tried": sorted({m.lr for m in ms})})
    return out


def fit_lr_rule(members: list[Member], bootstrap: int = 200, seed: int = 0) -> dict:
    """lr*(n) = A · n^p over the (n, k) swept in lr; raises :class:`Skipped` with the reason."""
    pts = lr_points(members)
    if len({p["n"] for p in pts}) < 2:
        raise Skipped(f"needs >= 3 lr values at >= 2 values of n (have them at {len({p['n'] for p in pts})} n)")
    n = np.array([p["n"] for p in pts], dtype=np.float64)
    fit = fit_power_law(n, np.array([p["lr"] for p in pts]), bootstrap, seed)
    return {"law": "lr*(n) = exp(log_A) * n^p", **fit.to_dict(), "points": pts,
            "default": {"law": "lr = exp(log_A) n^p sqrt(batch / 4096)", **DEFAULT},
            "paper": {"law": "lr = 2e-4 / sqrt(n / 2^14)", **PAPER_LR_RULE}}
