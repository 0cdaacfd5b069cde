"""Every scaling fit of a set of sweep members, grouped, as one JSON-ready record and a short summary.

Members are grouped by comparability (:mod:`saescale.scaling.groups`: equal in every recorded
setting but n, k, tokens, lr and seed), and each group is named by the settings that set it
apart. Per group, seeds are averaged first (one point per (n, k, lr, tokens), the spread
recorded), then the joint law, the compute frontier and the lr rule are fitted to the points.
L(N_model) compares the models of groups equal in all but model, hook and width d. The
primary group (most members, then name) is the one the ``joint fit:`` line reports. A fit the
data cannot support is recorded as ``{"skipped": reason}``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from saescale.scaling.compute import ComputeFit, fit_compute
from saescale.scaling.fitting import ParamFit, Skipped
from saescale.scaling.groups import (
    differing,
    group_labels,
    group_members,
    mean_over_seeds,
    seed_spread,
    shared_settings,
)
from saescale.scaling.joint import JointFit, fit_joint
from saescale.scaling.lr_rule import fit_lr_rule
from saescale.scaling.model_size import fit_model_size
from saescale.scaling.results import Member, Settings

MODEL_AXES = ("model", "hook", "sae.d")
"""What L(N_model) compares across: the subject model, and with it its hook and width."""


def attempt(fn: Callable[..., Any], *args: Any) -> tuple[Any, str]:
    """(result, "") or (None, reason) when ``fn`` raises :class:`Skipped`."""
    try:
        return fn(*args), ""
    except Skipped as e:
        return None, str(e)


@dataclass
class GroupFits:
    """The fits of one group of comparable members; each is None with a reason when skipped."""

    label: str
    members: list[Member]
    points: list[Member]
    """The members with seeds averaged: what the laws are fitted to."""
    settings: dict
    """Every setting the group's members share."""
    differs: dict
    """The settings that set this group apart from the others (name: value), as in ``label``."""
    joint: JointFit | None
    joint_skipped: str
    compute: ComputeFit | None
    compute_skipped: str
    lr_rule: dict | None
    lr_rule_skipped: str

    @property
    def fitted(self) -> bool:
        return any(f is not None for f in (self.joint, self.compute, self.lr_rule))

    def to_dict(self) -> dict:
        def part(fit: Any, why: str) -> dict:
            return {"skipped": why} if fit is None else (fit if isinstance(fit, dict) else fit.to_dict())

        return {"members": [m.uid for m in self.members], "differs": self.differs, "settings": self.settings,
                "seed_means": seed_spread(self.points), "joint": part(self.joint, self.joint_skipped),
                "compute": part(self.compute, self.compute_skipped), "lr_rule": part(self.lr_rule, self.lr_rule_skipped)}


@dataclass
class ScalingFits:
    groups: dict[str, GroupFits]
    model_size: dict[str, dict]
    """By label (arch and the settings that differ): the fit record or {"skipped": reason}."""
    primary: str

    @property
    def fitted(self) -> bool:
        """Whether any law was fitted at all."""
        return any(g.fitted for g in self.groups.values()) or any("skipped" not in r for r in self.model_size.values())

    def to_dict(self) -> dict:
        return {"primary": self.primary, "groups": {k: g.to_dict() for k, g in self.groups.items()},
                "model_size": self.model_size}


def fit_group(label: str, members: list[Member], differs: dict, heldout: int, seed: int, bootstrap: int) -> GroupFits:
    """Average the seeds of one group, then fit the joint law, L(C) and the lr rule to its points."""
    points = mean_over_seeds(members)
    joint, jw = attempt(fit_joint, points, heldout, seed, bootstrap)
    comp, cw = attempt(fit_compute, points, bootstrap, seed)
    lr, lw = attempt(fit_lr_rule, points, bootstrap, seed)
    return GroupFits(label, members, points, shared_settings(members[0].group), differs, joint, jw, comp, cw, lr, lw)


def _differs(key: Settings, names: list[str]) -> dict:
    table = shared_settings(key)
    return {name: table.get(name) for name in names}


def _model_size_groups(groups: dict[Settings, list[Member]]) -> dict[str, list[Member]]:
    """Members of groups equal in all but :data:`MODEL_AXES`, by label (arch and what differs)."""
    by_key: dict[Settings, list[Member]] = defaultdict(list)
    for key, ms in groups.items():
        by_key[tuple((n, v) for n, v in key if n not in MODEL_AXES)] += ms
    labels = group_labels(list(by_key), base=("sae.arch",))
    return {labels[key]: ms for key, ms in by_key.items()}


def fit_all(members: list[Member], heldout: int = 3, seed: int = 0, bootstrap: int = 200,
            target_loss: float = 0.0) -> ScalingFits:
    """Fit every law to ``members`` (see the module docstring for the grouping)."""
    by_key = group_members(members)
    labels = group_labels(list(by_key))
    names = [n for n in differing(list(by_key)) if n not in ("model", "sae.arch")]
    groups = {labels[key]: fit_group(labels[key], ms, _differs(key, names), heldout, seed, bootstrap)
              for key, ms in sorted(by_key.items(), key=lambda kv: labels[kv[0]])}
    sizes = {}
    for label, ms in sorted(_model_size_groups(by_key).items()):
        keys = list(dict.fromkeys(m.group for m in ms))
        split = sorted(model for model in {m.model for m in ms} if len({m.group for m in ms if m.model == model}) > 1)
        if split:
            sizes[label] = {"skipped": f"model(s) {', '.join(split)} swept at several hooks or widths: "
                                       "fit each hook on its own (one results file per hook)"}
            continue
        fit, why = attempt(fit_model_size, [p for key in keys for p in mean_over_seeds(by_key[key])],
                           target_loss, bootstrap, seed)
        sizes[label] = fit if fit is not None else {"skipped": why}
    primary = max(sorted(groups), key=lambda label: len(groups[label].members))
    return ScalingFits(groups, sizes, primary)


def nothing_fitted(fits: ScalingFits, members: list[Member]) -> str:
    """One line saying why no law could be fitted (the primary group's reasons)."""
    g = fits.groups[fits.primary]
    ns, ks = len({p.n for p in g.points}), len({p.k for p in g.points})
    return (f"no law could be fitted to the {len(members)} member(s) in {len(fits.groups)} group(s) (largest, "
            f"{fits.primary}: {len(g.points)} point(s) over {ns} n and {ks} k; joint law: {g.joint_skipped}): "
            "sweep more n, k, tokens or lr (members that differ in other settings are not pooled)")


def _params(fit: ParamFit, names: tuple[str, ...] | None = None) -> str:
    parts = []
    for n in names or fit.names:
        ci = fit.ci(n)
        parts.append(f"{n}={fit[n]:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else ""))
    return ", ".join(parts)


def _interval(ci: tuple[float, float] | list[float] | None) -> str:
    return f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "[no CI]"


def joint_headline(j: JointFit) -> str:
    """'R2=… heldout_rel_err=… beta_n=X [lo, hi] gamma=Y [lo, hi]' (95 % intervals; the issue's exact form)."""
    return (f"R2={j.fit.r2:.3f} heldout_rel_err={j.heldout_rel_err:.3f} "
            f"beta_n={j.fit['beta_n']:.4g} {_interval(j.fit.ci('beta_n'))} gamma={j.fit['gamma']:.4g} {_interval(j.fit.ci('gamma'))}")


def n_opt_headline(c: ComputeFit) -> str:
    """'n_opt exponent: p=X [lo, hi]': n_opt(C) ∝ C^p on the compute frontier."""
    return f"n_opt exponent: p={c.n_opt['p']:.4g} {_interval(c.n_opt.ci('p'))}"


def model_size_headline(rec: dict) -> str:
    """'L(N_model): q=X [lo, hi]': n_needed ∝ N_model^q at the target loss."""
    return f"L(N_model): q={rec['params']['q']:.4g} {_interval(rec['ci95'].get('q'))}"


def _joint_lines(g: GroupFits, primary: bool) -> list[str]:
    tag = "joint fit" if primary else f"joint fit [{g.label}]"
    if g.joint is None:
        return [f"{tag}: skipped: {g.joint_skipped}"]
    j = g.joint
    ci = f"95% CI from {j.fit.resamples} resamples (seed {j.fit.seed})" if j.fit.resamples >= 2 else "no CIs"
    return [f"  L(n,k) = exp(alpha + beta_k log k + beta_n log n + gamma log k log n) + exp(zeta + eta log k)"
            f" on {j.fit.n_points} (n, k) points, {ci}:",
            *j.fit.lines("    "),
            f"{tag}: {joint_headline(j)}",
            f"  held out (seed {j.heldout_seed}): {', '.join(j.heldout_ids) or 'none'}"]


def _compute_lines(g: GroupFits) -> list[str]:
    if g.compute is None:
        return [f"  L(C): skipped: {g.compute_skipped}"]
    c = g.compute
    out = [f"  L(C) = exp(a) C^b + c on {c.fit.n_points} frontier points: {_params(c.fit)}, R2={c.fit.r2:.3f}"]
    if c.n_opt is None:
        return out + [f"  n_opt(C): skipped: {c.n_opt_skipped}"]
    t = c.tokens_opt()
    return out + [f"  n_opt(C) = exp(log_A) C^p: {_params(c.n_opt)};"
                  f" tokens_opt(C) = exp({t['log_B']:.4g}) C^{t['exponent']:.4g}", f"  {n_opt_headline(c)}"]


def _lr_lines(g: GroupFits) -> list[str]:
    if g.lr_rule is None:
        return [f"  lr*(n): skipped: {g.lr_rule_skipped}"]
    r, d = g.lr_rule, g.lr_rule["default"]
    ci = r["ci95"]["p"]
    span = f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else ""
    edge = [f"n={p['n']} k={p['k']}" for p in r["points"] if p["clamped"]]
    return [f"  lr*(n) = exp({r['params']['log_A']:.4g}) n^{r['params']['p']:.4g}{span} (R2={r['r2']:.3f});"
            f" default rule (batch 4096): exp({d['log_A']:.4g}) n^{d['p']:.4g}"] + \
        ([f"  lr*: best lr at the edge of the tried range for {', '.join(edge)}: widen the lr grid"] if edge else [])


def _group_notes(g: GroupFits) -> list[str]:
    """How many points are means over seeds (with their spread), and members without recorded settings."""
    out = []
    means = [p for p in g.points if p.seeds]
    if means:
        rel = sorted(p.loss_sd / p.loss for p in means)
        lo, hi = min(len(p.seeds) for p in means), max(len(p.seeds) for p in means)
        out.append(f"  {len(means)} of {len(g.points)} points are means over {lo if lo == hi else f'{lo}-{hi}'} seeds;"
                   f" seed sd / mean loss: median {np.median(rel):.2%}, max {rel[-1]:.2%}")
    bare = sum(not m.settings_recorded for m in g.members)
    if bare:
        out.append(f"  {bare} member(s) record no 'settings': compared on model, hook, arch, multi_topk and"
                   " dead window only")
    return out


def summary_lines(fits: ScalingFits) -> list[str]:
    """A short human summary: every fit's parameters with CIs, R², held-out error, skips."""
    lines = []
    told = sorted({name for g in fits.groups.values() for name in g.differs})
    if len(fits.groups) > 1:
        lines.append(f"{len(fits.groups)} groups of comparable members" +
                     (f", told apart by {', '.join(told)}" if told else " (different models or architectures)"))
    for label, g in fits.groups.items():
        lines.append(f"{label}: {len(g.members)} members")
        lines += _group_notes(g) + _joint_lines(g, label == fits.primary) + _compute_lines(g) + _lr_lines(g)
    for arch, rec in fits.model_size.items():
        if "skipped" in rec:
            lines.append(f"L(N_model) [{arch}]: skipped: {rec['skipped']}")
        else:
            p = rec["params"]
            lines.append(f"L(N_model) [{arch}]: n_needed = exp({p['log_A']:.4g}) N_model^{p['q']:.4g}"
                         f" at k={rec['k_ref']}, L*={rec['target_loss']:.4g}; CI {rec.get('ci_kind', 'over models')}")
            lines.append(model_size_headline(rec))
    return lines
