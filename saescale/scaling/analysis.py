"""Every scaling fit of a set of sweep members, grouped, as one JSON-ready record and a short summary.

Members are grouped by subject model and architecture (``model/arch``): the joint law,
the compute frontier and the lr rule are fitted per group; L(N_model) compares the
models of one architecture. The primary group (most members, then name) is the one the
``joint fit:`` line reports. A fit the data cannot support is recorded as
``{"skipped": reason}``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

from saescale.scaling.compute import ComputeFit, fit_compute
from saescale.scaling.fitting import ParamFit, Skipped
from saescale.scaling.joint import JointFit, fit_joint
from saescale.scaling.lr_rule import fit_lr_rule
from saescale.scaling.model_size import fit_model_size
from saescale.scaling.results import Member


def attempt(fn: Callable[..., Any], *args: Any) -> tuple[Any, str]:
    """(result, "") or (None, reason) when ``fn`` raises :class:`Skipped`."""
    try:
        return fn(*args), ""
    except Skipped as e:
        return None, str(e)


@dataclass
class GroupFits:
    """The fits of one ``model/arch`` group; each is None with a reason when skipped."""

    label: str
    members: list[Member]
    joint: JointFit | None
    joint_skipped: str
    compute: ComputeFit | None
    compute_skipped: str
    lr_rule: dict | None
    lr_rule_skipped: str

    def to_dict(self) -> dict:
        def part(fit: Any, why: str) -> dict:
            return {"skipped": why} if fit is None else (fit if isinstance(fit, dict) else fit.to_dict())

        return {"members": [m.uid for m in self.members], "joint": part(self.joint, self.joint_skipped),
                "compute": part(self.compute, self.compute_skipped), "lr_rule": part(self.lr_rule, self.lr_rule_skipped)}


@dataclass
class ScalingFits:
    groups: dict[str, GroupFits]
    model_size: dict[str, dict]
    """By architecture: the fit record or {"skipped": reason}."""
    primary: str

    def to_dict(self) -> dict:
        return {"primary": self.primary, "groups": {k: g.to_dict() for k, g in self.groups.items()},
                "model_size": self.model_size}


def fit_group(members: list[Member], heldout: int, seed: int, bootstrap: int) -> GroupFits:
    joint, jw = attempt(fit_joint, members, heldout, seed, bootstrap)
    comp, cw = attempt(fit_compute, members, bootstrap, seed)
    lr, lw = attempt(fit_lr_rule, members, bootstrap, seed)
    return GroupFits(members[0].group, members, joint, jw, comp, cw, lr, lw)


def fit_all(members: list[Member], heldout: int = 3, seed: int = 0, bootstrap: int = 200,
            target_loss: float = 0.0) -> ScalingFits:
    """Fit every law to ``members`` (see the module docstring for the grouping)."""
    by_group: dict[str, list[Member]] = defaultdict(list)
    by_arch: dict[str, list[Member]] = defaultdict(list)
    for m in members:
        by_group[m.group].append(m)
        by_arch[m.arch].append(m)
    groups = {label: fit_group(ms, heldout, seed, bootstrap) for label, ms in sorted(by_group.items())}
    sizes = {}
    for arch, ms in sorted(by_arch.items()):
        fit, why = attempt(fit_model_size, ms, target_loss, bootstrap, seed)
        sizes[arch] = fit if fit is not None else {"skipped": why}
    primary = max(sorted(groups), key=lambda label: len(groups[label].members))
    return ScalingFits(groups, sizes, primary)


def _params(fit: ParamFit, names: tuple[str, ...] | None = None) -> str:
    parts = []
    for n in names or fit.names:
        ci = fit.ci(n)
        parts.append(f"{n}={fit[n]:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else ""))
    return ", ".join(parts)


def _joint_lines(g: GroupFits, primary: bool) -> list[str]:
    tag = "joint fit" if primary else f"joint fit [{g.label}]"
    if g.joint is None:
        return [f"{tag}: skipped: {g.joint_skipped}"]
    j = g.joint
    ci = f"95% CI from {j.fit.resamples} resamples (seed {j.fit.seed})" if j.fit.resamples >= 2 else "no CIs"
    return [f"  L(n,k) = exp(alpha + beta_k log k + beta_n log n + gamma log k log n) + exp(zeta + eta log k)"
            f" on {j.fit.n_points} (n, k) points, {ci}:",
            *j.fit.lines("    "),
            f"{tag}: R2={j.fit.r2:.3f} heldout_rel_err={j.heldout_rel_err:.3f}",
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
                  f" tokens_opt(C) = exp({t['log_B']:.4g}) C^{t['exponent']:.4g}"]


def _lr_lines(g: GroupFits) -> list[str]:
    if g.lr_rule is None:
        return [f"  lr*(n): skipped: {g.lr_rule_skipped}"]
    r, d = g.lr_rule, g.lr_rule["default"]
    ci = r["ci95"]["p"]
    span = f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else ""
    edge = [f"n={p['n']} k={p['k']}" for p in r["points"] if p["clamped"]]
    return [f"  lr*(n) = exp({r['params']['log_A']:.4g}) n^{r['params']['p']:.4g}{span} (R2={r['r2']:.3f});"
            f" default rule: exp({d['log_A']:.4g}) n^{d['p']}"] + \
        ([f"  lr*: best lr at the edge of the tried range for {', '.join(edge)}: widen the lr grid"] if edge else [])


def summary_lines(fits: ScalingFits) -> list[str]:
    """A short human summary: every fit's parameters with CIs, R², held-out error, skips."""
    lines = []
    for label, g in fits.groups.items():
        lines.append(f"{label}: {len(g.members)} members")
        lines += _joint_lines(g, label == fits.primary) + _compute_lines(g) + _lr_lines(g)
    for arch, rec in fits.model_size.items():
        if "skipped" in rec:
            lines.append(f"L(N_model) [{arch}]: skipped: {rec['skipped']}")
        else:
            p = rec["params"]
            lines.append(f"L(N_model) [{arch}]: n_needed = exp({p['log_A']:.4g}) N_model^{p['q']:.4g}"
                         f" at k={rec['k_ref']}, L*={rec['target_loss']:.4g}")
    return lines
