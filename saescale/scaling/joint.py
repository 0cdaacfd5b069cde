"""The joint law of final loss in latents n and sparsity k (paper, "Scaling laws"):

    L(n, k) = exp(α + β_k log k + β_n log n + γ log k log n) + exp(ζ + η log k)

The first term is the part more latents remove (its n-exponent is β_n + γ log k, so γ < 0
means larger k makes n-scaling steeper); the second is the part that depends on k only
(irreducible in n). Paper, GPT-4: α=−0.50, β_k=0.26, β_n=−0.017, γ=−0.042, ζ=−1.32, η=−0.085.

Points: one per (n, k), from one group of comparable members with seeds already averaged
(:func:`saescale.scaling.groups.mean_over_seeds`). Of the points sharing (n, k) (different lr
or tokens), keep those with the largest token budget, and of these the lowest final loss (the
best lr at the full budget). Held-out check: ``heldout`` points drawn by
``numpy.random.default_rng(seed)`` are left out of the fit and the bootstrap; reported
is their mean relative error mean |L̂ − L| / L.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from saescale.scaling.fitting import ParamFit, Skipped, fit_with_ci
from saescale.scaling.results import Member

NAMES = ("alpha", "beta_k", "beta_n", "gamma", "zeta", "eta")


def _terms(theta: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, bk, bn, g, z, e = theta
    ln, lk = X[:, 0], X[:, 1]
    return np.exp(np.clip(a + bk * lk + bn * ln + g * lk * ln, -700, 700)), np.exp(np.clip(z + e * lk, -700, 700))


def joint_loss(theta: np.ndarray, X: np.ndarray) -> np.ndarray:
    """L(n, k) for params θ = (α, β_k, β_n, γ, ζ, η) (6,) and X = [log n, log k] (N, 2) -> (N,)."""
    t1, t2 = _terms(theta, X)
    return t1 + t2


def joint_log_jac(theta: np.ndarray, X: np.ndarray) -> np.ndarray:
    """∂ log L / ∂θ (N, 6): (t1 · [1, log k, log n, log k log n], t2 · [1, log k]) / L."""
    t1, t2 = _terms(theta, X)
    ln, lk, one = X[:, 0], X[:, 1], np.ones(len(X))
    J = np.stack([t1 * one, t1 * lk, t1 * ln, t1 * lk * ln, t2 * one, t2 * lk], axis=1)
    return J / (t1 + t2)[:, None]


def best_per_nk(members: list[Member]) -> list[Member]:
    """One member per (n, k): the lowest loss among those with the largest token budget; sorted by (n, k)."""
    best: dict[tuple[int, int], Member] = {}
    for m in members:
        cur = best.get((m.n, m.k))
        if cur is None or (m.tokens, -m.loss) > (cur.tokens, -cur.loss):
            best[(m.n, m.k)] = m
    return [best[key] for key in sorted(best)]


def split_heldout(points: list[Member], heldout: int, seed: int) -> tuple[list[Member], list[Member]]:
    """(fit points, held-out points): ``heldout`` drawn without replacement by default_rng(seed)."""
    idx = set(np.random.default_rng(seed).choice(len(points), size=min(heldout, len(points)), replace=False).tolist())
    return [p for i, p in enumerate(points) if i not in idx], [p for i, p in enumerate(points) if i in idx]


def features(points: list[Member]) -> tuple[np.ndarray, np.ndarray]:
    """X = [log n, log k] (N, 2) and final losses L (N,)."""
    X = np.array([[np.log(p.n), np.log(p.k)] for p in points], dtype=np.float64).reshape(-1, 2)
    return X, np.array([p.loss for p in points], dtype=np.float64)


def starts(X: np.ndarray, L: np.ndarray) -> list[np.ndarray]:
    """Initial guesses: the k-term at a fraction f of min L, the rest by linear regression of log(L − f·min L)."""
    ln, lk = X[:, 0], X[:, 1]
    A = np.stack([np.ones_like(ln), lk, ln, lk * ln], axis=1)
    out = []
    for frac in (0.5, 0.2, 0.8):
        floor = frac * L.min()
        coef = np.linalg.lstsq(A, np.log(L - floor), rcond=None)[0]
        out.append(np.array([*coef, np.log(floor), 0.0]))
    out.append(np.array([np.log(0.5 * np.median(L)), 0.0, -0.05, 0.0, np.log(0.5 * L.min()), 0.0]))
    return out


@dataclass
class JointFit:
    """The joint law fitted to one group's (n, k) points, with the held-out check."""

    fit: ParamFit
    points: list[Member]
    """Every (n, k) point, fitted or held out."""
    heldout_ids: list[str]
    heldout_rel_err: float
    """Mean |L̂ − L| / L over the held-out points (nan when none)."""
    heldout_seed: int

    def predict(self, n: np.ndarray, k: np.ndarray) -> np.ndarray:
        """L̂(n, k) (N,) for latents n (N,) and sparsity k (N,)."""
        X = np.stack([np.log(np.asarray(n, dtype=np.float64)), np.log(np.asarray(k, dtype=np.float64))], axis=1)
        return joint_loss(self.fit.values, X)

    def rel_errors(self) -> dict[str, float]:
        """(L̂ − L) / L of every point, by member uid."""
        pred = self.predict(np.array([p.n for p in self.points]), np.array([p.k for p in self.points]))
        return {p.uid: float((q - p.loss) / p.loss) for p, q in zip(self.points, pred)}

    def to_dict(self) -> dict:
        return {"law": "L(n,k) = exp(alpha + beta_k log k + beta_n log n + gamma log k log n) + exp(zeta + eta log k)",
                **self.fit.to_dict(), "heldout_ids": self.heldout_ids, "heldout_rel_err": self.heldout_rel_err,
                "heldout_seed": self.heldout_seed, "rel_errors": self.rel_errors(),
                "points": [p.uid for p in self.points]}


def fit_joint(members: list[Member], heldout: int = 3, seed: int = 0, bootstrap: int = 200) -> JointFit:
    """Fit L(n, k) to the best final loss per (n, k) of one group, leaving ``heldout`` points out."""
    points = best_per_nk(members)
    train, held = split_heldout(points, heldout, seed)
    X, L = features(train)
    if len(train) < len(NAMES) + 1 or len(np.unique(X[:, 0])) < 2 or len(np.unique(X[:, 1])) < 2:
        raise Skipped(f"needs >= {len(NAMES) + 1} (n, k) points over >= 2 n and >= 2 k after holding out "
                      f"{len(held)}; got {len(train)} (sweep more (n, k) or lower --heldout)")
    fit = fit_with_ci(joint_loss, NAMES, X, L, starts(X, L), bootstrap, seed, jac=joint_log_jac)
    Xh, Lh = features(held)
    err = float(np.mean(np.abs(joint_loss(fit.values, Xh) - Lh) / Lh)) if held else float("nan")
    return JointFit(fit, points, [p.uid for p in held], err, seed)
