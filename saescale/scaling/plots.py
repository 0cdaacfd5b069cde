"""Figures of the scaling fits (PNG and SVG each, written atomically; matplotlib imported only here).

- ``loss_vs_compute``: every point's curve (thin; seeds averaged), the frontier points and the fitted L(C), log-log;
- ``loss_vs_n``: final loss per (n, k), one colour per k, with the joint fit's curves; held-out points as crosses;
- ``joint_residuals``: relative error (L̂ − L) / L of the joint fit against n, per k.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from saescale.atomic import atomic_write_bytes
from saescale.errors import SaescaleError
from saescale.scaling.analysis import GroupFits, ScalingFits

LOSS_LABEL = "held-out normalised MSE (final loss L)"


def pyplot():
    """matplotlib.pyplot on the Agg backend, or a SaescaleError naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise SaescaleError("plots need matplotlib: pip install 'saescale[plots]' (or pass --no-plots)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, stem: Path) -> list[Path]:
    """Write ``stem``.png and ``stem``.svg atomically; returns the paths."""
    paths = []
    for fmt in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=120)
        path = stem.with_name(f"{stem.name}.{fmt}")
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def _compute_figure(plt, g: GroupFits):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in g.points:  # seeds averaged
        ax.plot(m.curve_compute, m.curve_loss, color="0.6", linewidth=0.6, alpha=0.7)
    c = g.compute
    ax.plot(c.frontier.compute, c.frontier.loss, "o", color="black", markersize=3, label="frontier (best loss at ≤ C)")
    grid = np.geomspace(c.frontier.compute[0], c.frontier.compute[-1], 200)
    f = c.fit
    ax.plot(grid, c.predict(grid), color="tab:red",
            label=f"fit exp(a)·C^b + c: b={f['b']:.3f}, c={f['c']:.3g} (R²={f.r2:.3f})")
    ax.set(xscale="log", yscale="log", xlabel="training compute C = 12·d·n·tokens (FLOPs)", ylabel=LOSS_LABEL,
           title=f"L(C) compute frontier: {g.label}")
    ax.plot([], [], color="0.6", linewidth=0.6, label="member curves")
    ax.legend(fontsize=8)
    return fig


def _k_colours(plt, ks: list[int]) -> dict[int, tuple]:
    cmap = plt.get_cmap("viridis")
    return {k: cmap(i / max(len(ks) - 1, 1)) for i, k in enumerate(ks)}


def _n_figure(plt, g: GroupFits):
    j = g.joint
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ks = sorted({p.k for p in j.points})
    colour = _k_colours(plt, ks)
    held = set(j.heldout_ids)
    n_grid = np.geomspace(min(p.n for p in j.points), max(p.n for p in j.points), 100)
    for k in ks:
        pts = [p for p in j.points if p.k == k]
        fit_pts = [p for p in pts if p.uid not in held]
        out_pts = [p for p in pts if p.uid in held]
        ax.plot(n_grid, j.predict(n_grid, np.full_like(n_grid, k)), color=colour[k], linewidth=1)
        ax.plot([p.n for p in fit_pts], [p.loss for p in fit_pts], "o", color=colour[k], markersize=4, label=f"k={k}")
        ax.plot([p.n for p in out_pts], [p.loss for p in out_pts], "x", color=colour[k], markersize=8, mew=2)
    ax.plot([], [], "x", color="black", label="held out (not fitted)")
    ax.plot([], [], "-", color="black", label=f"joint fit (R²={j.fit.r2:.3f})")
    ax.set(xscale="log", yscale="log", xlabel="latents n", ylabel=LOSS_LABEL, title=f"L(n, k) joint fit: {g.label}")
    ax.legend(fontsize=8, ncol=2)
    return fig


def _residual_figure(plt, g: GroupFits):
    j = g.joint
    err = j.rel_errors()
    held = set(j.heldout_ids)
    ks = sorted({p.k for p in j.points})
    colour = _k_colours(plt, ks)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for k in ks:
        pts = [p for p in j.points if p.k == k]
        ax.plot([p.n for p in pts], [err[p.uid] for p in pts], "-o", color=colour[k], markersize=3, linewidth=0.8,
                label=f"k={k}")
        out = [p for p in pts if p.uid in held]
        ax.plot([p.n for p in out], [err[p.uid] for p in out], "x", color=colour[k], markersize=8, mew=2)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.plot([], [], "x", color="black", label="held out")
    ax.set(xscale="log", xlabel="latents n", ylabel="relative error (L̂ − L) / L",
           title=f"joint fit residuals: {g.label} (held-out mean |err| {j.heldout_rel_err:.3f})")
    ax.legend(fontsize=8, ncol=2)
    return fig


def save_plots(fits: ScalingFits, out: Path) -> list[Path]:
    """Write the figures of every group into ``out``; a suffix names the group when there are several."""
    plt = pyplot()
    paths = []
    for label, g in fits.groups.items():
        suffix = "" if len(fits.groups) == 1 else "-" + re.sub(r"[^A-Za-z0-9._-]+", "_", label)
        figures = []
        if g.compute is not None:
            figures.append(("loss_vs_compute", _compute_figure))
        if g.joint is not None:
            figures += [("loss_vs_n", _n_figure), ("joint_residuals", _residual_figure)]
        for name, make in figures:
            fig = make(plt, g)
            fig.tight_layout()
            try:
                paths += _save(fig, out / f"{name}{suffix}")
            finally:
                plt.close(fig)
    return paths
