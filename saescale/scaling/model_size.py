"""L(N_model): how many latents a bigger subject model needs for the same loss (paper, "Scaling laws").

For one architecture swept over ≥ 2 subject models (``model_params`` given), at a shared
sparsity k_ref (the median of the k every model has) and a target loss L* (default: the
median final loss of the members at k_ref), each model's latents needed is read off its
L(n) curve at k_ref (best loss per n, made non-increasing in n, interpolated in log-log;
no extrapolation: a model whose range misses L* is left out), and

    n_needed = exp(log_A) · N_model^q

is fitted by least squares on (log N_model, log n_needed). When the models' L(n) ranges do not overlap (the
median loss lies inside fewer than 2 of them) and no target is given, each model's L(n) is fitted as a power
law A n^b and read at the loss halfway (in log) between the models' mean losses, extrapolating; the record's
``method`` says which reading was used. CIs: from ≥ 4 models a bootstrap over models;
from 2 or 3 a bootstrap within models (each model's L(n) points at k_ref resampled with replacement,
n_needed read off again, q refitted), which measures how well each model's n_needed is pinned by its
sweep, not how q varies across model families (two models give one slope: ``ci_kind`` says which).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from saescale.scaling.fitting import Skipped, fit_power_law
from saescale.scaling.joint import best_per_nk
from saescale.scaling.results import Member


def n_needed(members: list[Member], k: int, target: float) -> float | None:
    """Latents one model needs at sparsity ``k`` to reach loss ``target``; None outside its L(n) range."""
    pts = [m for m in best_per_nk(members) if m.k == k]
    if len(pts) < 2:
        return None
    n = np.log([m.n for m in pts])
    loss = np.log(np.minimum.accumulate([m.loss for m in pts]))  # more latents never hurt
    if not loss[-1] <= np.log(target) <= loss[0]:
        return None
    # np.interp needs increasing x: read log n off the reversed (increasing) log loss
    return float(np.exp(np.interp(np.log(target), loss[::-1], n[::-1])))


def n_needed_power_law(members: list[Member], k: int, target: float) -> float | None:
    """Latents one model needs at sparsity ``k`` for loss ``target`` from a power law L(n) = A n^b fitted to its
    best loss per n (log-log least squares), extrapolated if need be; None with < 2 points or b >= 0."""
    pts = [m for m in best_per_nk(members) if m.k == k]
    if len({m.n for m in pts}) < 2:
        return None
    b, a = np.polyfit(np.log([m.n for m in pts]), np.log([m.loss for m in pts]), 1)
    return float(np.exp((np.log(target) - a) / b)) if b < 0 else None


def fit_model_size(members: list[Member], target: float = 0.0, bootstrap: int = 200, seed: int = 0) -> dict:
    """n_needed ∝ N_model^q for one architecture's members; ``target`` ≤ 0: the median loss at k_ref.

    Raises :class:`Skipped` (with the reason) when fewer than 2 models can be compared.
    """
    by_model: dict[str, list[Member]] = defaultdict(list)
    for m in members:
        if m.model_params is not None:
            by_model[m.model].append(m)
    if len(by_model) < 2:
        raise Skipped("needs sweeps over >= 2 models (with model_params)")
    shared = sorted(set.intersection(*({m.k for m in ms} for ms in by_model.values())))
    if not shared:
        raise Skipped("no k is shared by every model's sweep")
    k_ref = shared[(len(shared) - 1) // 2]
    given = target > 0
    if target <= 0:
        target = float(np.median([m.loss for ms in by_model.values() for m in ms if m.k == k_ref]))
    reader, method = n_needed, "interpolated on each model's L(n)"
    needed = {name: n_needed(ms, k_ref, target) for name, ms in by_model.items()}
    if sum(v is not None for v in needed.values()) < 2 and not given:
        # the models' L(n) ranges do not overlap at the median: a power law per model, read at the loss
        # halfway (in log) between the models' mean losses, extrapolated beyond each model's own range
        logs = [np.mean(np.log([m.loss for m in ms if m.k == k_ref])) for ms in by_model.values()]
        target = float(np.exp(np.mean(logs)))
        reader, method = n_needed_power_law, "power law L(n) = A n^b per model, extrapolated to a shared loss"
        needed = {name: n_needed_power_law(ms, k_ref, target) for name, ms in by_model.items()}
    usable = {name: v for name, v in needed.items() if v is not None}
    if len(usable) < 2:
        raise Skipped(f"target loss {target:.4g} is inside the L(n) range (k={k_ref}) of < 2 models; pass --target-loss")
    params = {name: by_model[name][0].model_params for name in usable}
    fit = fit_power_law(np.array([params[x] for x in usable], dtype=np.float64), np.array(list(usable.values())),
                        bootstrap if len(usable) >= 4 else 0, seed, names=("log_A", "q"))
    out = {"law": "n_needed = exp(log_A) * N_model^q", **fit.to_dict(), "k_ref": k_ref, "target_loss": target,
           "n_needed": needed, "model_params": {name: ms[0].model_params for name, ms in by_model.items()},
           "ci_kind": "over models" if len(usable) >= 4 else "none", "method": method}
    if len(usable) < 4 and bootstrap > 0:
        ci = within_model_ci({x: by_model[x] for x in usable}, params, k_ref, target, bootstrap, seed, reader)
        if ci is not None:
            out["ci95"] = {**out["ci95"], "q": ci[0]}
            out["bootstrap_resamples"], out["ci_kind"] = ci[1], "within models (each model's L(n) points resampled)"
    return out


def within_model_ci(by_model: dict[str, list[Member]], params: dict[str, int], k: int, target: float,
                    resamples: int, seed: int, reader=n_needed) -> tuple[list[float], int] | None:
    """95 % percentile interval of q from resampling each model's L(n) points at ``k`` (with replacement) and
    refitting; (interval, resamples that gave every model an n_needed), None when under 10 did."""
    rng = np.random.default_rng(seed)
    pts = {name: [m for m in best_per_nk(ms) if m.k == k] for name, ms in by_model.items()}
    logN = np.log(np.array([params[name] for name in pts], dtype=np.float64))
    qs = []
    for _ in range(resamples):
        needed = [reader([p[i] for i in sorted(set(rng.integers(0, len(p), len(p)).tolist()))], k, target)
                  for p in pts.values()]
        if all(v is not None for v in needed):
            qs.append(np.polyfit(logN, np.log(needed), 1)[0])
    if len(qs) < 10:
        return None
    return [float(np.percentile(qs, 2.5)), float(np.percentile(qs, 97.5))], len(qs)
