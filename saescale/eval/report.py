"""A readable table of eval results, and JSON clean-up (NaN -> null)."""

from __future__ import annotations

import math
from typing import Any

# (metric, key, label, format) rows of the summary table
ROWS = [
    ("recon", "nmse", "nMSE (normalised space)", "{:.4f}"),
    ("recon", "l0", "L0", "{:.1f}"),
    ("recon", "never_fired_frac", "never fired on the eval tokens", "{:.2%}"),
    ("recon", "dense_frac", "dense latents (>10% of tokens)", "{:.2%}"),
    ("downstream", "ce_orig", "CE original (nats)", "{:.4f}"),
    ("downstream", "delta_ce_sae", "ΔCE SAE (nats)", "{:.4f}"),
    ("downstream", "kl_sae", "KL(orig || SAE)", "{:.4f}"),
    ("downstream", "delta_ce_zero", "ΔCE zero-ablation", "{:.4f}"),
    ("downstream", "delta_ce_mean", "ΔCE mean-ablation", "{:.4f}"),
    ("downstream", "loss_recovered_vs_zero", "loss recovered vs zero", "{:.2%}"),
    ("downstream", "loss_recovered_vs_mean", "loss recovered vs mean", "{:.2%}"),
    ("probes", "probe_loss", "probe loss (mean best-latent CE)", "{:.4f}"),
    ("probes", "dense_probe_loss", "dense probe loss (ceiling)", "{:.4f}"),
    ("n2g", "precision", "N2G precision", "{:.3f}"),
    ("n2g", "recall", "N2G recall", "{:.3f}"),
    ("ablation", "ablation_sparsity", "ablation sparsity (lower = sparser)", "{:.4f}"),
    ("refine", "activation_ratio", "refined / original activation", "{:.3f}"),
    ("refine", "nmse_drop", "nMSE drop from refinement", "{:.5f}"),
]


def _fmt(fmt: str, v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _ci(ci: list | None) -> str:
    return f" [{_fmt('{:.4f}', ci[0])}, {_fmt('{:.4f}', ci[1])}]" if ci else ""


def probe_lines(probes: dict) -> list[str]:
    """The probe-loss interval line and one line per task: score [95% CI] (latent, dense, pos/neg examples)."""
    lines = []
    if "probe_loss_ci" in probes:
        b = probes["bootstrap"]
        lines.append(f"  probe intervals: 95% bootstrap, mean over {probes['tasks_scored']} tasks, task over its test "
                     f"documents; {b['resamples']} resamples, seed {b['seed']}")
    for name, r in probes.get("tasks", {}).items():
        size = f"{r['pos']}/{r['neg']} pos/neg" if "pos" in r else ""
        if "test_ce" not in r:
            lines.append(f"  probe {name:32s} {r.get('skipped', '')}" + (f" ({size})" if size else ""))
            continue
        dense = f", dense {_fmt('{:.4f}', r['dense_test_ce'])}" if "dense_test_ce" in r else ""
        lines.append(f"  probe {name:32s} {_fmt('{:.4f}', r['test_ce'])}{_ci(r.get('test_ce_ci'))} "
                     f"(latent {r['latent']}{dense}" + (f", {size})" if size else ")"))
    return lines


def format_table(results: dict[str, dict]) -> str:
    """Summary lines for the computed metrics, plus per-task probe scores and the progressive curves."""
    lines = [f"{'metric':40s} value", "-" * 52]
    for metric, key, label, fmt in ROWS:
        if key in results.get(metric, {}):
            ci = results[metric].get(f"{key}_ci")  # a 95% interval, where the metric gives one
            lines.append(f"{label:40s} {_fmt(fmt, results[metric][key])}{_ci(ci)}")
    lines += probe_lines(results.get("probes", {}))
    prog = results.get("progressive", {})
    if "k" in prog:
        curve = ", ".join(f"k={k}: {v:.4f}" for k, v in zip(prog["k"], prog["nmse"]))
        lines.append(f"{'nMSE at test-time k':40s} {curve}")
    if "threshold" in prog:
        th = prog["threshold"]
        curve = ", ".join(f"L0={l0:.1f}: {v:.4f}" for l0, v in zip(th["l0"], th["nmse"]))
        lines.append(f"{'nMSE at test-time threshold θ':40s} {curve}")
    for r in results.get("n2g", {}).get("per_latent", [])[:5]:
        lines.append(f"  n2g latent {r['latent']:<6d} P={_fmt('{:.2f}', r['precision'])} R={_fmt('{:.2f}', r['recall'])}  {r['explanation'][:60]!r}")
    return "\n".join(lines)


def json_safe(obj: Any) -> Any:
    """Replace NaN / inf floats by None, recursively (metrics.json stays strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
