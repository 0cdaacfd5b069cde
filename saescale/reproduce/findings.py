"""Each finding of the paper beside what the reproduction measured, with a verdict and its reason.

A finding is computed from the finished members of its units only (their result files), so the report
can be rebuilt anywhere from the committed results. A finding whose units are not finished is
``pending``. Verdicts:

- ``reproduced``: every criterion of the paper's claim holds here (each is listed in ``criteria``);
- ``partly``: some hold;
- ``not``: none holds;
- ``pending``: its runs are not finished yet.

A finding measured in part (some of its units finished, ``waiting`` names the others) is at most
``partly``, whatever its criteria so far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from saescale.reproduce.profiles import MODELS

Results = dict[str, list[dict[str, Any]]]  # unit name -> finished members' results


@dataclass
class Finding:
    id: str
    title: str
    claim: str
    verdict: str = "pending"
    reason: str = ""
    criteria: list[dict[str, Any]] = field(default_factory=list)  # {"test": text, "holds": bool}
    numbers: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)  # exact printed lines (e.g. the joint fit's)
    figures: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # what is still to be measured ("L(N_model): unit ...")

    def judge(self, reason_ok: str = "", reason_no: str = "") -> "Finding":
        """Set the verdict from the criteria; the reason names the criteria that fail."""
        held = [c["holds"] for c in self.criteria]
        self.verdict = "reproduced" if all(held) else "partly" if any(held) else "not"
        failed = [c["test"] for c in self.criteria if not c["holds"]]
        self.reason = reason_ok if not failed else ("fails: " + "; ".join(failed) + (f". {reason_no}" if reason_no else ""))
        if self.waiting and self.verdict == "reproduced":
            self.verdict = "partly"
            self.reason = "every criterion measured so far holds; still to measure: " + "; ".join(self.waiting)
        elif self.waiting:
            self.reason += "; still to measure: " + "; ".join(self.waiting)
        return self

    def check(self, test: str, holds: bool) -> None:
        self.criteria.append({"test": test, "holds": bool(holds)})

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _dce(r: dict[str, Any]) -> float | None:
    return ((r.get("extra") or {}).get("metrics", {}).get("downstream") or {}).get("delta_ce_sae")


def _metric(r: dict[str, Any], name: str, key: str) -> float | None:
    v = ((r.get("extra") or {}).get("metrics", {}).get(name) or {}).get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _interp_loglog(x: float, xs: list[float], ys: list[float]) -> float | None:
    """y at x on the log-log polyline through (xs, ys) sorted by x; None outside its range."""
    pts = sorted(zip(xs, ys))
    lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    if len(pts) < 2 or not lx[0] <= math.log(x) <= lx[-1]:
        return None
    return float(np.exp(np.interp(math.log(x), lx, ly)))


def frontier(results: Results, units_done: set[str]) -> Finding:
    f = Finding("frontier", "TopK against ReLU and every architecture on the nMSE-L0 frontier",
                "At equal sparsity (L0), TopK reaches lower nMSE than ReLU + L1 (the paper's Figure 2: TopK beats "
                "ReLU and ProLU, and is competitive with Gated); lower nMSE also gives lower ΔCE.",
                figures=["frontier.png"])
    arch_units = [u for u in units_done if u.startswith("arch-")]
    if "arch-topk-family" not in units_done or "arch-l1-family" not in units_done:
        return f
    members = [r for u in arch_units for r in results[u]]
    by_arch: dict[str, list[dict[str, Any]]] = {}
    for r in members:
        by_arch.setdefault(r["arch"], []).append(r)
    f.numbers["points"] = {a: [{"id": r["id"], "l0": r["l0"], "nmse": r["loss"], "delta_ce": _dce(r),
                                "dead_frac": r.get("dead_frac")} for r in sorted(rs, key=lambda r: r["l0"])]
                           for a, rs in sorted(by_arch.items())}
    topk = by_arch["topk"]
    for arch, rs in sorted(by_arch.items()):
        if arch == "topk":
            continue
        cmp = []
        for t in topk:
            other = _interp_loglog(t["l0"], [r["l0"] for r in rs], [r["loss"] for r in rs])
            if other is not None:
                cmp.append({"l0": t["l0"], "topk": t["loss"], arch: other, "topk_better": t["loss"] < other})
        f.numbers[f"topk_vs_{arch}"] = cmp
    relu = f.numbers.get("topk_vs_relu", [])
    f.check("ReLU's frontier overlaps TopK's L0 range (a comparison at equal L0 exists)", bool(relu))
    f.check("TopK has lower nMSE than ReLU at every comparable L0", bool(relu) and all(c["topk_better"] for c in relu))
    pairs = [(r["loss"], _dce(r)) for r in members if _dce(r) is not None]
    if len(pairs) >= 3:
        rho = _spearman([p[0] for p in pairs], [p[1] for p in pairs])
        f.numbers["spearman_nmse_dce"] = rho
        f.check(f"lower nMSE goes with lower ΔCE across all SAEs (Spearman ρ = {rho:.2f} > 0.5)", rho > 0.5)
    others = {a: c for a, c in ((k.removeprefix("topk_vs_"), v) for k, v in f.numbers.items() if k.startswith("topk_vs_"))
              if a != "relu"}
    summary = ", ".join(f"{a}: TopK better at {sum(c['topk_better'] for c in v)}/{len(v)}" for a, v in others.items())
    f.judge("TopK's frontier lies below ReLU's at equal L0" + (f"; other architectures ({summary})" if summary else ""),
            f"Other architectures: {summary}" if summary else "")
    f.reason += _budget_note(by_arch)
    return f


def _budget_note(by_arch: dict[str, list[dict[str, Any]]]) -> str:
    """The training budget behind the frontier, from the members: equal tokens is not convergence, and how
    far each side still fell over its last doubling of tokens says how much the gap may move."""
    fell = {a: [r["last_doubling"]["rel_change"] for r in rs if r.get("last_doubling")] for a, rs in by_arch.items()}
    tokens = sorted({r["tokens"] for rs in by_arch.values() for r in rs})
    if not fell.get("topk") or not fell.get("relu"):
        return ""
    span = lambda v: f"{min(v):.0%}-{max(v):.0%}"  # noqa: E731
    return (f". Compared at equal budgets ({', '.join(f'{t:,}' for t in tokens)} tokens), not at convergence: "
            f"over the last doubling of tokens the held-out loss still fell {span(fell['topk'])} for TopK and "
            f"{span(fell['relu'])} for ReLU, so the gap measured here may narrow with longer training")


def _spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def dead_latents(results: Results, units_done: set[str]) -> Finding:
    f = Finding("dead", "Dead latents with and without tied initialisation and AuxK",
                "Without tied init and AuxK many latents die (up to 90 % at 16M latents); with both, few do "
                "(7 % at 16M, ~0 at small n).", figures=["dead.png"])
    if "dead-latents" not in units_done:
        return f
    rows = {(r["settings"]["train"]["tied_init"], r["settings"]["train"]["aux_coef"] > 0): r for r in results["dead-latents"]}
    table = [{"tied_init": t, "auxk": a, "dead_frac": r.get("dead_frac"), "never_fired_frac": r.get("never_fired_frac"),
              "nmse": r["loss"], "n": r["n"], "k": r["k"], "tokens": r["tokens"],
              "dead_window_tokens": r.get("dead_window_tokens")} for (t, a), r in sorted(rows.items())]
    f.numbers["table"] = table
    both, neither = rows.get((True, True)), rows.get((False, False))
    if both is None or neither is None:
        return f.judge()
    f.check(f"with tied init + AuxK at most 10 % dead (here {both['dead_frac']:.1%})", both["dead_frac"] <= 0.10)
    f.check(f"without either, more dead latents than with both ({neither['dead_frac']:.1%} vs {both['dead_frac']:.1%})",
            neither["dead_frac"] > both["dead_frac"])
    for c, name in (((True, False), "tied init"), ((False, True), "AuxK")):
        if c in rows:
            f.check(f"{name} alone leaves no more dead latents than neither "
                    f"({rows[c]['dead_frac']:.1%} vs {neither['dead_frac']:.1%})",
                    rows[c]["dead_frac"] <= neither["dead_frac"])
    return f.judge(f"dead: {both['dead_frac']:.1%} with both, {neither['dead_frac']:.1%} with neither",
                   _dead_context(both, neither))


def _dead_context(both: dict[str, Any], neither: dict[str, Any]) -> str:
    """What the measured fractions say about a failed criterion, from the numbers (not a fixed excuse)."""
    window = both.get("dead_window_tokens")
    scale = (f"At n = {both['n']} and {both['tokens']:,} tokens"
             + (f" (dead: no fire in the last {window:,})" if window else "") + ", ")
    if neither["dead_frac"] <= 0.10:
        return scale + ("latents barely die even without the fixes: the run may be too small for the effect "
                        "(the paper sees it at millions of latents)")
    return scale + (f"latents do die without the fixes ({neither['dead_frac']:.1%}); a dead fraction above the "
                    "paper's at this scale means the fixes revive fewer latents here than in its runs, not that "
                    "none die")


def scaling(results: Results, units_done: set[str], fits: dict[str, Any] | None) -> Finding:
    f = Finding("scaling", "Scaling laws: L(n, k), the compute frontier, and subject-model size",
                "L(n, k) = exp(α + β_k log k + β_n log n + γ log k log n) + exp(ζ + η log k) with β_n < 0 and γ < 0 "
                "(GPT-4: β_n = −0.017, γ = −0.042); n_opt(C) grows as a power of compute; bigger subject models need "
                "more latents for the same loss. Issue 20's bar: both intervals exclude 0, R² ≥ 0.97, held-out "
                "relative error ≤ 5 %, p's interval above 0.",
                figures=["scaling_loss_vs_n.png", "scaling_frontier.png"])
    if "scaling-default" not in units_done or fits is None:
        return f
    f.numbers = fits
    j = fits.get("joint")
    if j and "params" in j:
        f.lines.append(fits["joint_line"])
        bn, g = j["ci95"]["beta_n"], j["ci95"]["gamma"]
        f.check("β_n < 0 with its 95 % interval below 0", j["params"]["beta_n"] < 0 and bn is not None and bn[1] < 0)
        f.check("γ < 0 with its 95 % interval below 0", j["params"]["gamma"] < 0 and g is not None and g[1] < 0)
        f.check(f"R² ≥ 0.97 (here {j['r2']:.3f})", j["r2"] >= 0.97)
        f.check(f"held-out relative error ≤ 5 % (here {j['heldout_rel_err']:.1%})", j["heldout_rel_err"] <= 0.05)
    else:
        f.check(f"the joint law could be fitted ({(j or {}).get('skipped', 'no fit')})", False)
    n_opt = fits.get("n_opt")
    if n_opt and "params" in n_opt:
        f.lines.append(fits["n_opt_line"])
        ci = n_opt["ci95"]["p"]
        f.check("n_opt(C) ∝ C^p with p's 95 % interval above 0", ci is not None and ci[0] > 0)
    else:
        f.check(f"n_opt(C) could be fitted ({(n_opt or {}).get('skipped', 'no fit')})", False)
    size = fits.get("model_size")
    if size and "params" in size:
        f.lines.append(fits["model_size_line"])
        f.lines.append(f"  (n_needed at nMSE {size['target_loss']:.4g}, k = {size['k_ref']}: {size.get('method', '')}; "
                       f"interval {size.get('ci_kind', '')})")
        ci = size["ci95"].get("q")
        f.check("the bigger subject model needs more latents for the same loss (q > 0, interval above 0)",
                size["params"]["q"] > 0 and ci is not None and ci[0] > 0)
    elif "scaling-gemma3-270m" in units_done:
        f.check(f"L(N_model) could be fitted ({(size or {}).get('skipped', 'no fit')})", False)
    else:
        f.waiting.append("L(N_model), the unit scaling-gemma3-270m")
    conv = [r["last_doubling"]["rel_change"] for r in results["scaling-default"] if r.get("last_doubling")]
    if conv:
        f.numbers["last_doubling_max"] = max(conv)
        f.numbers["last_doubling_median"] = float(np.median(conv))
    f.judge("every criterion holds", "")
    f.reason += _scaling_context(conv, size if size and "params" in size else None)
    return f


def _scaling_context(conv: list[float], size: dict[str, Any] | None) -> str:
    """What the numbers behind a scaling verdict are, from the fits: losses at the sweep's budgets (how far
    they still fell), and what one pair of subject models can show."""
    out = ""
    if conv:
        out += (f". Losses at the sweep's budgets, not at convergence: held-out loss still fell "
                f"{min(conv):.0%}-{max(conv):.0%} over each member's last doubling of tokens")
    if size:
        (ka, na), (kb, nb) = sorted(size["model_params"].items(), key=lambda kv: kv[1])
        ratio = size["n_needed"][kb] / size["n_needed"][ka]
        a, b = MODELS.get(ka, ka), MODELS.get(kb, kb)
        out += (f". L(N_model) compares two subject models of different families ({a}: {na / 1e6:.0f}M and {b}: "
                f"{nb / 1e6:.0f}M parameters, embeddings counted): {b} needs {ratio:.2g}x the latents of {a} at "
                f"nMSE {size['target_loss']:.3g}; one pair gives this pair's sign, it cannot separate model size "
                "from family, tokenizer, width or training data, and q's interval is within-model")
    return out


def progressive(results: Results, units_done: set[str]) -> Finding:
    f = Finding("progressive", "Multi-TopK against TopK: progressive codes",
                "A TopK SAE is good only up to about its training k when encoded with TopK(k′) at test time; "
                "Multi-TopK (L(k) + L(4k)/8) keeps improving past it. A fixed threshold θ also gives a progressive code.",
                figures=["progressive.png"])
    if "progressive" not in units_done:
        return f
    rows = {r["multi_topk"]: (r.get("extra") or {}).get("metrics", {}).get("progressive") for r in results["progressive"]}
    if not rows.get(False) or not rows.get(True):
        return f.judge()
    f.numbers = {"topk": rows[False], "multi_topk": rows[True]}
    k = rows[False]["train_k"]

    def at(res: dict, factor: float) -> float:
        return res["nmse"][res["k"].index(min(res["k"], key=lambda x: abs(x - factor * k)))]

    plain_gain, multi_gain = at(rows[False], 1) - at(rows[False], 4), at(rows[True], 1) - at(rows[True], 4)
    f.numbers["nmse_drop_k_to_4k"] = {"topk": plain_gain, "multi_topk": multi_gain}
    f.check(f"Multi-TopK gains more from k to 4k at test time than TopK (nMSE drop {multi_gain:.3f} vs {plain_gain:.3f})",
            multi_gain > plain_gain)
    f.check("Multi-TopK's nMSE at 4k is lower than TopK's at 4k", at(rows[True], 4) < at(rows[False], 4))
    th = rows[True]["threshold"]
    f.check("the fixed-threshold code's nMSE falls as θ lowers (L0 grows)",
            all(b <= a + 1e-9 for a, b in zip(th["nmse"], th["nmse"][1:])) if th["l0"] == sorted(th["l0"]) else
            _spearman(th["l0"], th["nmse"]) < 0)
    return f.judge("Multi-TopK's code keeps improving past its training k; TopK's does less")


def trends(results: Results, units_done: set[str], p) -> Finding:
    f = Finding("quality", "ΔCE, probe loss, N2G and ablation sparsity as n and k grow",
                "Bigger SAEs (n) and denser codes (k) reconstruct better downstream (ΔCE falls with n and k); probe "
                "loss falls with n; N2G explanations' precision and recall do not get worse with n; ablation effects get "
                "sparser with k (until k nears d_model).", figures=["quality_vs_n.png", "quality_vs_k.png"])
    if "scaling-default" not in units_done:
        return f
    rs = results["scaling-default"]
    row = sorted((r for r in rs if r["k"] == p.eval_k), key=lambda r: r["n"])
    col = sorted((r for r in rs if r["n"] == p.eval_n), key=lambda r: r["k"])
    metrics = {"delta_ce": ("downstream", "delta_ce_sae"), "probe_loss": ("probes", "probe_loss"),
               "n2g_precision": ("n2g", "precision"), "n2g_recall": ("n2g", "recall"),
               "ablation_sparsity": ("ablation", "ablation_sparsity")}
    for axis, pts in (("n", row), ("k", col)):
        f.numbers[f"vs_{axis}"] = [{axis: r[axis], "nmse": r["loss"], **{m: _metric(r, *src) for m, src in metrics.items()}}
                                   for r in pts]

    def slope(axis: str, m: str) -> float | None:
        pts = [(q[axis], q[m]) for q in f.numbers[f"vs_{axis}"] if q[m] is not None]
        return float(np.polyfit(np.log([a for a, _ in pts]), [b for _, b in pts], 1)[0]) if len(pts) >= 2 else None

    s = {f"{m}_vs_{a}": slope(a, m) for a in ("n", "k") for m in metrics}
    f.numbers["slopes_per_log"] = s
    for key, want, text in (("delta_ce_vs_n", -1, "ΔCE falls with n"), ("delta_ce_vs_k", -1, "ΔCE falls with k"),
                            ("probe_loss_vs_n", -1, "probe loss falls with n"),
                            ("n2g_recall_vs_n", 0, "N2G recall does not fall with n"),
                            ("ablation_sparsity_vs_k", -1, "ablation sparsity score falls (sparser) with k")):
        v = s[key]
        if v is not None:
            f.check(f"{text} (slope per e-fold {v:+.3g})", v < 0 if want < 0 else v >= -0.01)
    return f.judge("every trend has the paper's sign",
                   "Each trend is a least-squares slope over a handful of SAEs, one seed each")


def refinement(results: Results, units_done: set[str]) -> Finding:
    f = Finding("refine", "Refinement: activation shrinkage of TopK against ReLU",
                "Re-optimising the active latents' values with the decoder and support fixed grows ReLU + L1 "
                "activations (shrinkage: ratio > 1) and changes TopK's little (ratio ≈ 1), with a larger nMSE gain "
                "for ReLU.", figures=["refine.png"])
    if "arch-topk-family" not in units_done or "arch-l1-family" not in units_done:
        return f
    rows = {}
    for r in results["arch-topk-family"] + results["arch-l1-family"]:
        ref = (r.get("extra") or {}).get("metrics", {}).get("refine")
        if ref and r["arch"] in ("topk", "relu"):
            rows.setdefault(r["arch"], []).append({"id": r["id"], "l0": r["l0"], **ref})
    f.numbers = rows
    if "topk" not in rows or "relu" not in rows:
        return f.judge()
    t = float(np.mean([x["activation_ratio"] for x in rows["topk"]]))
    u = float(np.mean([x["activation_ratio"] for x in rows["relu"]]))
    f.check(f"ReLU's activations grow under refinement (mean ratio {u:.3f} > 1.02)", u > 1.02)
    f.check(f"TopK shrinks less than ReLU (ratio {t:.3f} vs {u:.3f})", abs(t - 1) < abs(u - 1))
    f.check("refinement lowers ReLU's nMSE more than TopK's",
            np.mean([x["nmse_drop"] for x in rows["relu"]]) > np.mean([x["nmse_drop"] for x in rows["topk"]]))
    return f.judge("ReLU shrinks its activations and TopK barely does, as in the paper")


def all_findings(results: Results, units_done: set[str], fits: dict[str, Any] | None, p) -> list[Finding]:
    return [frontier(results, units_done), dead_latents(results, units_done), scaling(results, units_done, fits),
            progressive(results, units_done), trends(results, units_done, p), refinement(results, units_done)]
