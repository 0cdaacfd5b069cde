"""``saescale dashboard``: a static, offline feature browser (index + one page per latent) of an SAE, built from
one pass over its activation cache (see docs/dashboard.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from saescale.commands.eval import tqdm_track
from saescale.configs import check_valid, config_to_dict, valid
from saescale.errors import SaescaleError
from saescale.eval.n2g import N2GConfig


@dataclass(frozen=True)
class DashboardN2G(N2GConfig):
    """N2G explanations of dashboard latents: eval's algorithm and options, smaller defaults (each explanation
    runs the model a few hundred times: measured ~1-5 s a latent on 2 CPU cores with 8 + 8 examples, ~4-20 s
    with eval's 16 + 16)."""

    latents: int = valid(8, ">= 1")
    """Latents newly explained with N2G (a seeded random sample of the firing latents that get pages; ~5-15 s each on 2 CPU cores with SmolLM2-135M); a rebuild into the same --out (same SAE, cache split, N2G settings, seed) keeps the earlier explanations and adds this many."""

    build: int = valid(8, ">= 1")
    """Top-activating contexts used to build each explanation."""

    test: int = valid(8, ">= 1")
    """Top-activating contexts (besides those) used to test each explanation."""


@dataclass
class DashboardCommand:
    """Build a static feature browser of an SAE: an index of every latent and one page per latent."""

    sae: str = field(default="", metadata={"positional": True})
    """SAE folder (cfg.json + sae.safetensors, e.g. runs/<run>/sae); its model and activation cache are read from cfg.json."""

    out: str = ""
    """Folder to write (replaced if it holds an earlier dashboard). Empty: <run folder>/dashboard."""

    latents: str = "all"
    """Latents that get pages: 'all', a count N (latents 0..N-1), or ids and ranges like 0,5,10-20."""

    split: Literal["train", "val"] = "train"
    """Split of the activation cache to pass over."""

    top: int = valid(16, "[1, 256]")
    """Top-activating contexts shown per latent."""

    samples: int = valid(8, "[0, 64]")
    """Contexts sampled from each latent's activation quantiles (one per distinct octave bin)."""

    neighbours: int = valid(8, "[1, 64]")
    """Nearest latents by decoder cosine shown per latent."""

    logits: int = valid(10, "[1, 100]")
    """Promoted and suppressed tokens (logit lens) shown per latent."""

    batch: int = valid(32, ">= 1")
    """Contexts encoded per step of the pass."""

    seed: int = valid(0, ">= 0")
    """Seed of the quantile samples, N2G's latent sample and its example split."""

    neuronpedia: bool = False
    """Also write neuronpedia/batch-*.json in the shape of SAEDashboard's Neuronpedia export."""

    model: str = ""
    """Override the model recorded in the SAE's cfg.json (e.g. a local copy); empty = the recorded one."""

    threads: int = valid(0, "[0, 1024]")
    """Torch CPU threads; 0 = torch's default."""

    progress: bool = True
    """Show progress bars (stderr)."""

    n2g: DashboardN2G = field(default_factory=DashboardN2G, metadata={"prefix": "n2g"})

    def __post_init__(self) -> None:
        check_valid(self)
        if not self.sae:
            raise SaescaleError("give the SAE folder: saescale dashboard SAE_DIR (e.g. runs/demo/sae)")

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(self.sae).resolve().parent / "dashboard"


def run_dashboard(cfg: DashboardCommand, lm=None) -> dict:
    """Build the dashboard; prints where it is; returns the summary written to dashboard.json."""
    from saescale.commands.progress import ProgressBar
    from saescale.dashboard.build import (
        build,
        load_inputs,
        parse_latents,
        scratch_folder,
    )
    from saescale.sae.io import read_cfg

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if not Path(cfg.sae).is_dir():
        raise SaescaleError(f"SAE folder {cfg.sae} not found: give the sae/ folder of a training run")
    sae_cfg, _ = read_cfg(cfg.sae)
    latents = parse_latents(cfg.latents, sae_cfg.n)
    out = cfg.out_dir
    tmp = scratch_folder(out)  # an unwritable --out fails here, before the model loads
    bar = ProgressBar(desc="dashboard pass", enabled=cfg.progress)
    track = tqdm_track if cfg.progress else (lambda items, desc, total: items)
    run = Path(cfg.sae).resolve().parent.name
    settings = {"config": config_to_dict(cfg), "title": f"saescale dashboard: {run}", "split": cfg.split,
                "sae": str(Path(cfg.sae).resolve())}
    try:
        inp = load_inputs(cfg.sae, cfg.split, cfg.model, lm)
        summary = build(inp, out, tmp, latents, top=cfg.top, samples=cfg.samples, neighbours=cfg.neighbours,
                        logits=cfg.logits, n2g=cfg.n2g, seed=cfg.seed, batch=cfg.batch, neuronpedia=cfg.neuronpedia,
                        track=track, progress=bar, settings=settings)
    finally:
        bar.close()
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    print(f"dashboard: {summary['latents']} latent pages ({summary['explained']} with N2G, {summary['ngram_explained']} with n-grams) over "
          f"{summary['n_tokens']:,} tokens in {sum(summary['seconds'].values()):.0f} s "
          f"({', '.join(f'{k} {v:.0f} s' for k, v in summary['seconds'].items())}) -> {out / 'index.html'}")
    return summary
