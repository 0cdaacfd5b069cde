"""The compute frontier L(C) and the compute-optimal n(C) (paper, "Scaling laws").

Each curve point of a member costs C = flops_per_token · tokens with flops_per_token = 12·d·n
(6 FLOPs per weight per token over the 2·d·n weights: :func:`saescale.sweep.runner.flops_per_token`).
On a log grid of C spanning every member's curve (as many points as curve points that set a
record, see :func:`frontier`), the frontier is the lowest loss any
member has reached with compute ≤ C: for one member, the smaller of its best curve point
at or below C and its curve interpolated in log-log at C (only inside its own range; a
member whose curve starts above C does not count). The frontier is fitted with an
irreducible term (our default):

    L(C) = exp(a) · C^b + c,   c ≥ 0,

in log-loss space with bootstrap CIs over frontier points. The member setting the frontier
at each grid C gives the compute-optimal size, fitted as a power law n_opt(C) = A · C^p;
with flops_per_token = f·n (f = 12·d, the median over members), the optimal budget is

    tokens_opt(C) = C / (f · n_opt(C)) = C^(1−p) / (f · A).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from saescale.scaling.fitting import ParamFit, Skipped, fit_power_law, fit_with_ci
from saescale.scaling.results import Member

NAMES = ("a", "b", "c")


def best_loss_at(member: Member, C: np.ndarray) -> np.ndarray:
    """(G,) lowest loss ``member`` reached with compute ≤ C for each C (G,); nan before its first point."""
    cc, loss = member.curve_compute, np.asarray(member.curve_loss, dtype=np.float64)
    idx = np.searchsorted(cc, C, side="right") - 1  # last curve point at or below C
    running_min = np.minimum.accumulate(loss)
    out = np.where(idx >= 0, running_min[np.maximum(idx, 0)], np.nan)
    inside = (C >= cc[0]) & (C <= cc[-1])
    interp = np.exp(np.interp(np.log(C), np.log(cc), np.log(loss)))
    return np.where(inside, np.fmin(out, interp), out)


@dataclass
class Frontier:
    """The best loss per compute budget and the member that reaches it (all arrays (G,))."""

    compute: np.ndarray
    loss: np.ndarray
    setter: list[Member]

    def to_dict(self) -> dict:
        return {"compute": self.compute.tolist(), "loss": self.loss.tolist(), "setter": [m.uid for m in self.setter],
                "n": [m.n for m in self.setter]}


def record_points(members: list[Member]) -> int:
    """How many curve points set a new record: a loss below every point at lower or equal compute."""
    pts = sorted((c, loss) for m in members for c, loss in zip(m.curve_compute, m.curve_loss))
    best, count = np.inf, 0
    for _, loss in pts:
        if loss < best:
            best, count = loss, count + 1
    return count


def frontier(members: list[Member], points: int = 0) -> Frontier:
    """The L(C) frontier on ``points`` log-spaced budgets from the cheapest to the costliest curve point.

    ``points`` ≤ 0: as many as the curve points that set a record (:func:`record_points`), the
    independent observations behind the frontier, so a bootstrap over grid points does not count
    one observation many times (a denser grid gives too narrow intervals).
    """
    points = points if points > 0 else record_points(members)
    lo = min(m.curve_compute[0] for m in members)
    hi = max(m.curve_compute[-1] for m in members)
    if not hi > lo or points < len(NAMES) + 1:
        raise Skipped(f"needs >= {len(NAMES) + 1} frontier points over > 1 compute budget, got {points}: "
                      "log more curve points or sweep more n")
    C = np.geomspace(lo, hi, points)
    table = np.stack([best_loss_at(m, C) for m in members])  # (M, G)
    best = np.nanargmin(table, axis=0)  # every grid C has a member: lo is some member's first point
    return Frontier(C, table[best, np.arange(points)], [members[i] for i in best])


def compute_loss(theta: np.ndarray, X: np.ndarray) -> np.ndarray:
    """L(C) = exp(a + b log C) + c for θ = (a, b, c) (3,) and X = [log C] (G, 1) -> (G,)."""
    return np.exp(np.clip(theta[0] + theta[1] * X[:, 0], -700, 700)) + theta[2]


def compute_log_jac(theta: np.ndarray, X: np.ndarray) -> np.ndarray:
    """∂ log L / ∂(a, b, c) (G, 3) = (e, e · log C, 1) / L with e = exp(a + b log C)."""
    e = np.exp(np.clip(theta[0] + theta[1] * X[:, 0], -700, 700))
    return np.stack([e, e * X[:, 0], np.ones_like(e)], axis=1) / (e + theta[2])[:, None]


def starts(X: np.ndarray, L: np.ndarray) -> list[np.ndarray]:
    """For c at fractions of min L: (a, b) from linear regression of log(L − c) on log C."""
    out = []
    for frac in (0.0, 0.5, 0.9):
        c = frac * L.min()
        b, a = np.polyfit(X[:, 0], np.log(L - c), 1)
        out.append(np.array([a, b, c]))
    return out


@dataclass
class ComputeFit:
    """L(C) fitted to one group's frontier, and the compute-optimal n and tokens."""

    frontier: Frontier
    fit: ParamFit
    n_opt: ParamFit | None
    """n_opt = exp(log_A) · C^p; None when one n sets the whole frontier."""
    n_opt_skipped: str
    flops_per_n: float
    """f in flops_per_token = f · n (12·d), median over the members."""

    def predict(self, C: np.ndarray) -> np.ndarray:
        return compute_loss(self.fit.values, np.log(np.asarray(C, dtype=np.float64))[:, None])

    def tokens_opt(self) -> dict | None:
        """tokens_opt(C) = exp(log_B) · C^exponent, from n_opt(C)."""
        if self.n_opt is None:
            return None
        return {"log_B": -np.log(self.flops_per_n) - self.n_opt["log_A"], "exponent": 1.0 - self.n_opt["p"]}

    def to_dict(self) -> dict:
        return {"law": "L(C) = exp(a) * C^b + c, c >= 0", **self.fit.to_dict(), "frontier": self.frontier.to_dict(),
                "n_opt": {"law": "n_opt(C) = exp(log_A) * C^p", **self.n_opt.to_dict()} if self.n_opt else
                {"skipped": self.n_opt_skipped},
                "tokens_opt": {"law": "tokens_opt(C) = exp(log_B) * C^exponent", **self.tokens_opt()}
                if self.n_opt else {"skipped": self.n_opt_skipped}, "flops_per_n": self.flops_per_n}


def fit_compute(members: list[Member], bootstrap: int = 200, seed: int = 0, points: int = 0) -> ComputeFit:
    """Fit L(C) = exp(a)·C^b + c to one group's frontier, and n_opt(C) = A·C^p to the frontier's setters."""
    front = frontier(members, points)
    X, L = np.log(front.compute)[:, None], front.loss
    fit = fit_with_ci(compute_loss, NAMES, X, L, starts(X, L), bootstrap, seed,
                      lower=np.array([-np.inf, -np.inf, 0.0]), jac=compute_log_jac)
    n = np.array([m.n for m in front.setter], dtype=np.float64)
    try:
        n_opt, why = fit_power_law(front.compute, n, bootstrap, seed), ""
    except Skipped:
        n_opt, why = None, f"one n ({int(n[0])}) sets the whole frontier: sweep more n"
    f = float(np.median([m.flops_per_token / m.n for m in members]))
    return ComputeFit(front, fit, n_opt, why, f)
