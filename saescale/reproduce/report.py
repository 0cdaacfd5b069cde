"""``report.json`` and ``report.html`` (with PNG figures) from a reproduction's finished members.

The report is rebuilt from OUT's member files alone (no SAE weights, no model), so it can be made on any
machine from the committed results. The HTML references only its own ``figures/*.png``: it opens offline.
"""

from __future__ import annotations

import dataclasses
import html
import time
from pathlib import Path
from typing import Any

import numpy as np

from saescale.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from saescale.reproduce.findings import Finding, Results, all_findings
from saescale.reproduce.profiles import Profile
from saescale.reproduce.runner import stored_results
from saescale.reproduce.units import units


def scaling_fits(results: Results, bootstrap: int = 200, seed: int = 0) -> dict[str, Any] | None:
    """The joint law and compute frontier of the default model's sweep, and L(N_model) with the second model."""
    from saescale.scaling.analysis import fit_all, joint_headline, model_size_headline, n_opt_headline
    from saescale.scaling.fitting import Skipped
    from saescale.scaling.groups import mean_over_seeds
    from saescale.scaling.model_size import fit_model_size
    from saescale.scaling.results import assign_uids, parse_member

    def members(unit: str) -> list:
        return [parse_member(r, f"{unit}/{r['id']}") for r in results.get(unit, [])]

    own = assign_uids(members("scaling-default"))
    if len(own) < 2:
        return None
    fits = fit_all(own, 3, seed, bootstrap)
    g = fits.groups[fits.primary]
    out: dict[str, Any] = {"group": g.label, "points": len(g.points), "bootstrap": bootstrap, "seed": seed}
    out["joint"] = g.joint.to_dict() if g.joint else {"skipped": g.joint_skipped}
    if g.joint:
        out["joint_line"] = "joint fit: " + joint_headline(g.joint)
    if g.compute is None:
        out["compute"] = out["n_opt"] = {"skipped": g.compute_skipped}
    else:
        out["compute"] = g.compute.to_dict()
        out["n_opt"] = out["compute"]["n_opt"]
        if g.compute.n_opt is not None:
            out["n_opt_line"] = n_opt_headline(g.compute)
    other = members("scaling-gemma3-270m")
    if other:
        both = assign_uids(own + other)
        pooled = mean_over_seeds([m for m in both if m.model == "default"]) + mean_over_seeds(
            [m for m in both if m.model != "default"])
        try:
            rec = fit_model_size(pooled, 0.0, bootstrap, seed)
            out["model_size"], out["model_size_line"] = rec, model_size_headline(rec)
        except Skipped as e:
            out["model_size"] = {"skipped": str(e)}
    return out


# ---- figures ------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _plt().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _sizes_axis(ax, values) -> None:
    """Label a log x axis with the swept sizes themselves (n or k), no minor tick labels."""
    from matplotlib.ticker import NullFormatter

    ticks = sorted(set(values))
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())


def _finish(fig, ax, path: Path, xlabel: str, ylabel: str, title: str, legend_size: int = 10) -> None:
    """Label one-axes figure ``fig``, add its legend and save it as PNG at ``path``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    _save(fig, path)


def fig_frontier(f: Finding, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for arch, pts in f.numbers["points"].items():
        ax.loglog([p["l0"] for p in pts], [p["nmse"] for p in pts], "o-" if arch == "topk" else "s--", label=arch)
    _finish(fig, ax, path, "L0 (held-out)", "nMSE (held-out)", "nMSE against L0, every architecture", 8)


def fig_dead(f: Finding, path: Path) -> None:
    plt = _plt()
    rows = f.numbers["table"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"tied={'on' if r['tied_init'] else 'off'}\nAuxK={'on' if r['auxk'] else 'off'}" for r in rows]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [100 * (r["dead_frac"] or 0) for r in rows], 0.4, label="dead (no fire in the window)")
    ax.bar(x + 0.2, [100 * (r["never_fired_frac"] or 0) for r in rows], 0.4, label="never fired on held-out tokens")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("% of latents")
    ax.set_title(f"Dead latents at n = {rows[0]['n']}, k = {rows[0]['k']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def fig_scaling(results: Results, fits: dict[str, Any], f: Finding, folder: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    own = results["scaling-default"]
    for k in sorted({r["k"] for r in own}):
        rs = sorted((r for r in own if r["k"] == k), key=lambda r: r["n"])
        ax.loglog([r["n"] for r in rs], [r["loss"] for r in rs], "o-", label=f"SmolLM2-135M k={k}")
    for k in sorted({r["k"] for r in results.get("scaling-gemma3-270m", [])}):
        rs = sorted((r for r in results["scaling-gemma3-270m"] if r["k"] == k), key=lambda r: r["n"])
        ax.loglog([r["n"] for r in rs], [r["loss"] for r in rs], "s--", color="black", label=f"Gemma-3-270M k={k}")
    _sizes_axis(ax, [r["n"] for r in own] + [r["n"] for r in results.get("scaling-gemma3-270m", [])])
    _finish(fig, ax, folder / "scaling_loss_vs_n.png", "n (latents)", "final held-out nMSE", "L(n) per k, budgets ∝ n^0.6", 7)
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in own:
        flops = r["flops_per_token"]
        ax.loglog([c["tokens"] * flops for c in r["curve"]], [c["loss"] for c in r["curve"]], "-", alpha=0.5, lw=1)
    comp = fits.get("compute", {})
    if "frontier" in comp:
        ax.loglog(comp["frontier"]["compute"], comp["frontier"]["loss"], "k.", label="frontier")
    _finish(fig, ax, folder / "scaling_frontier.png", "training compute C = 12 d n tokens (FLOPs)", "held-out nMSE", "Loss against compute (every member's curve)", 8)


def fig_progressive(f: Finding, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, res in (("TopK", f.numbers["topk"]), ("Multi-TopK", f.numbers["multi_topk"])):
        ax.loglog(res["l0"], res["nmse"], "o-", label=f"{name}: TopK(k') at test time")
        ax.loglog(res["threshold"]["l0"], res["threshold"]["nmse"], "s:", label=f"{name}: fixed threshold θ")
    ax.axvline(f.numbers["topk"]["train_k"], color="grey", ls=":", lw=1)
    _finish(fig, ax, path, "L0", "nMSE", "Progressive codes", 7)


def fig_quality(f: Finding, folder: Path) -> None:
    plt = _plt()
    names = [("delta_ce", "ΔCE (nats)"), ("probe_loss", "probe loss"), ("n2g_recall", "N2G recall / precision"),
             ("ablation_sparsity", "ablation sparsity (lower = sparser)")]
    for axis in ("n", "k"):
        pts = f.numbers[f"vs_{axis}"]
        fig, axes = plt.subplots(2, 2, figsize=(7, 5))
        for ax, (m, label) in zip(axes.flat, names):
            xs = [p[axis] for p in pts if p[m] is not None]
            ax.semilogx(xs, [p[m] for p in pts if p[m] is not None], "o-", label=m.replace("_", " "))
            if m == "n2g_recall":
                ax.semilogx([p[axis] for p in pts if p["n2g_precision"] is not None],
                            [p["n2g_precision"] for p in pts if p["n2g_precision"] is not None], "s--", label="precision")
                ax.legend(fontsize=7)
            ax.set_title(label, fontsize=9)
            ax.set_xlabel(axis)
            _sizes_axis(ax, [p[axis] for p in pts])
        fig.tight_layout()
        _save(fig, folder / f"quality_vs_{axis}.png")


def fig_refine(f: Finding, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for arch, rows in f.numbers.items():
        ax.semilogx([r["l0"] for r in rows], [r["activation_ratio"] for r in rows], "o-", label=arch)
    ax.axhline(1, color="grey", ls=":")
    ax.set_xlabel("L0")
    ax.set_ylabel("activation ratio after / before refinement")
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def figures(findings: list[Finding], results: Results, fits: dict[str, Any] | None, folder: Path) -> None:
    """Every figure of every finding that has its numbers (a pending finding has none)."""
    folder.mkdir(parents=True, exist_ok=True)
    by_id = {f.id: f for f in findings}
    drawers = {"frontier": lambda f: fig_frontier(f, folder / "frontier.png"), "dead": lambda f: fig_dead(f, folder / "dead.png"),
               "scaling": lambda f: fig_scaling(results, fits or {}, f, folder),
               "progressive": lambda f: fig_progressive(f, folder / "progressive.png"),
               "quality": lambda f: fig_quality(f, folder), "refine": lambda f: fig_refine(f, folder / "refine.png")}
    for fid, draw in drawers.items():
        f = by_id[fid]
        if f.verdict == "pending" or not f.numbers:
            f.figures = []
            continue
        draw(f)


# ---- the report ---------------------------------------------------------------------------------------
def machine_time(out: Path) -> tuple[float, list[dict[str, Any]]]:
    """Seconds of every run on record in OUT/chunks.jsonl, and its lines (a damaged line: one-line error)."""
    from saescale.configs import read_jsonl

    path = out / "chunks.jsonl"
    fix = "delete that line (it only records how long earlier runs took)"
    chunks = [c for _, c in read_jsonl(path, fix)] if path.exists() else []
    return sum(c["seconds"] for c in chunks), chunks


def build_report(p: Profile, out: Path, bootstrap: int = 200) -> dict[str, Any]:
    """Compute every finding from OUT's member files, draw the figures, write report.json and report.html."""
    all_units = units(p)
    results: Results = {u.name: stored_results(out, u) for u in all_units}
    from saescale.sweep.spec import load_spec

    status, done = {}, set()
    for u in all_units:
        spec_file = out / u.name / "spec.toml"
        total = len(load_spec(spec_file).members) if spec_file.exists() else None
        status[u.name] = {"finished": len(results[u.name]), "members": total}
        if total and len(results[u.name]) == total:
            done.add(u.name)
    fits = scaling_fits(results, bootstrap) if "scaling-default" in done else None
    findings = all_findings(results, done, fits, p)
    figures(findings, results, fits, out / "figures")
    seconds, chunks = machine_time(out)
    doc = {"profile": dataclasses.asdict(p), "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine_seconds": round(seconds, 1), "chunks": chunks, "units": status,
           "findings": [f.to_dict() for f in findings]}
    from saescale.eval.report import json_safe

    doc = json_safe(doc)
    atomic_write_json(out / "report.json", doc)
    atomic_write_text(out / "report.html", render_html(doc))
    return doc


VERDICT_COLOUR = {"reproduced": "#1a7f37", "partly": "#9a6700", "not": "#cf222e", "pending": "#57606a"}


def render_html(doc: dict[str, Any]) -> str:
    """One self-contained page (inline CSS, local PNGs): each finding beside the paper's claim, with its verdict."""
    e = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>saescale reproduce: {e(doc['profile']['name'])}"
             "</title><style>body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
             "section{border-top:1px solid #ccc;padding:1em 0}.v{color:#fff;padding:.1em .5em;border-radius:.3em}"
             "pre{background:#f6f8fa;padding:.5em;overflow-x:auto}img{max-width:100%}td,th{padding:.2em .6em;"
             "border-bottom:1px solid #eee;text-align:left}</style></head><body>",
             f"<h1>Scaling and evaluating sparse autoencoders: reproduction ({e(doc['profile']['name'])})</h1>",
             f"<p>Generated {e(doc['generated'])}; machine time so far {doc['machine_seconds'] / 3600:.2f} h over "
             f"{len(doc['chunks'])} run(s) of <code>saescale reproduce</code>. Corpus: {e(doc['profile']['corpus'])}.</p>"]
    for note in doc["profile"].get("notes", []):
        parts.append(f"<p><em>{e(note)}</em></p>")
    parts.append("<table><tr><th>unit</th><th>members finished</th></tr>" + "".join(
        f"<tr><td>{e(name)}</td><td>{s['finished']} of {s['members'] if s['members'] is not None else '?'}</td></tr>"
        for name, s in doc["units"].items()) + "</table>")
    parts.append("<h2>Summary</h2><table><tr><th>finding</th><th>verdict</th></tr>" + "".join(
        f"<tr><td><a href='#{e(f['id'])}'>{e(f['title'])}</a></td><td><span class='v' style='background:"
        f"{VERDICT_COLOUR[f['verdict']]}'>{e(f['verdict'])}</span></td></tr>" for f in doc["findings"]) + "</table>")
    for f in doc["findings"]:
        parts.append(f"<section id='{e(f['id'])}'><h2>{e(f['title'])} <span class='v' style='background:"
                     f"{VERDICT_COLOUR[f['verdict']]}'>{e(f['verdict'])}</span></h2>")
        parts.append(f"<p><b>The paper:</b> {e(f['claim'])}</p>")
        if f["verdict"] == "pending":
            parts.append("<p>Not run yet: rerun <code>saescale reproduce</code> to continue.</p></section>")
            continue
        parts.append(f"<p><b>Here:</b> {e(f['reason'])}</p><ul>" + "".join(
            f"<li>{'✓' if c['holds'] else '✗'} {e(c['test'])}</li>" for c in f["criteria"]) + "</ul>")
        if f["lines"]:
            parts.append("<pre>" + e("\n".join(f["lines"])) + "</pre>")
        parts += [f"<p><img src='figures/{e(name)}' alt='{e(name)}'></p>" for name in f["figures"]]
        parts.append("</section>")
    parts.append("<p>Numbers behind every figure: <code>report.json</code>; every member's result: "
                 "<code>&lt;unit&gt;/members/*.json</code>.</p></body></html>")
    return "\n".join(parts)
