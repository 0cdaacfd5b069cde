"""``saescale fit``: the scaling laws of finished sweeps -> fit.json, a summary, and plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from saescale.atomic import atomic_write_json
from saescale.configs import check_valid, config_to_dict, valid
from saescale.errors import SaescaleError


class NothingFitted(SaescaleError):
    """No law could be fitted (one member, identical members): exit 2, nothing written."""


@dataclass
class FitConfig:
    """Fit the scaling laws (joint L(n, k), L(C), n_opt(C), L(N_model), lr rule) to finished sweeps, per group of comparable members (seeds averaged)."""

    results: list[str] = field(default_factory=list, metadata={"positional": True})
    """Sweep folder(s) holding results.jsonl, or .jsonl file(s) (several: space- or comma-separated)."""

    out: str = ""
    """Folder for fit.json and the plots. Empty: the first results folder (a file's own folder)."""

    heldout: int = valid(3, ">= 0")
    """(n, k) points left out of the joint fit (drawn with --seed) to report its held-out relative error."""

    seed: int = valid(0, ">= 0")
    """Seed of the held-out draw and of the bootstrap resamples; same seed, same numbers."""

    bootstrap: int = valid(200, ">= 0")
    """Bootstrap resamples for the 95% confidence intervals (0: no intervals)."""

    target_loss: float = valid(0.0, ">= 0")
    """Loss at which L(N_model) compares the latents each subject model needs; 0: the median final loss."""

    plots: bool = True
    """Save loss_vs_compute, loss_vs_n and joint_residuals as PNG and SVG next to fit.json (needs matplotlib)."""

    def __post_init__(self) -> None:
        if isinstance(self.results, str):  # one path (or comma-separated paths) given as a string
            self.results = [self.results]
        if not self.paths:
            raise SaescaleError("--results is empty: give a sweep folder or a results.jsonl file")
        check_valid(self)

    @property
    def paths(self) -> list[str]:
        return [p.strip() for r in self.results for p in r.split(",") if p.strip()]

    @property
    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        first = Path(self.paths[0])
        return first if first.is_dir() else first.parent


def run_fit(cfg: FitConfig) -> dict:
    """Load the members, fit every law, print a summary, write fit.json (and plots); returns the written dict.

    Members are fitted in groups of comparable settings (saescale.scaling.groups), seeds averaged;
    when no law can be fitted at all (one member, say) it is a SaescaleError and nothing is written."""
    from saescale.eval.report import json_safe
    from saescale.scaling.analysis import fit_all, nothing_fitted, summary_lines
    from saescale.scaling.results import load_members, results_file

    if cfg.plots:
        from saescale.scaling.plots import pyplot, save_plots

        pyplot()  # no matplotlib: fail before the fits, not after
    members = load_members(cfg.paths)
    fits = fit_all(members, cfg.heldout, cfg.seed, cfg.bootstrap, cfg.target_loss)
    if not fits.fitted:
        raise NothingFitted(nothing_fitted(fits, members))
    print(f"loaded {len(members)} members from {len(cfg.paths)} result file(s)")
    print("\n".join(summary_lines(fits)))
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    plots = []
    if cfg.plots:
        plots = [p.name for p in save_plots(fits, cfg.out_dir)]
    doc = json_safe({"settings": {"config": config_to_dict(cfg), "files": [str(results_file(p)) for p in cfg.paths],
                                  "heldout_seed": cfg.seed, "bootstrap_seed": cfg.seed, "bootstrap": cfg.bootstrap},
                     **fits.to_dict(), "members": [m.to_dict() for m in members], "plots": plots})
    path = cfg.out_dir / "fit.json"
    atomic_write_json(path, doc)
    print(f"wrote {path}" + (f" and {len(plots)} plot files" if plots else ""))
    return doc
